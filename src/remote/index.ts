// remote/: `km1s logs` and `km1s exec` of a container on any node. The protocol /km1s/remote/1.0.0 carries
// one request per libp2p stream (logs, exec, list) in the control API's exec frames; this node serves its
// runtime's containers to peers and proxies its own API's requests to the node that runs the container.
// docs/remote.md.
export { FrameChannel, READ_BUFFER_BYTES, WINDOW_BYTES } from './channel.ts'
export {
  decodeRequest,
  ERR_NOT_HERE,
  MAX_REQUEST_BYTES,
  REMOTE_PROTOCOL,
  RemoteFrame,
  RemoteRequest,
} from './protocol.ts'
export { type NodeContainers, Remote, type RemoteInit, type RemoteStats } from './remote.ts'
