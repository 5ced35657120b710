// mesh/: the libp2p node of km1s. It owns the node's identity on the wire, the private network keyed by
// the cluster secret, discovery (mDNS, static peers, the persisted peer book), the LAN DHT, gossipsub,
// and a stay-connected loop that keeps one connection to every known peer of the cluster.
export {
  clusterId,
  generateClusterSecret,
  loadOrCreateIdentity,
  readClusterSecret,
} from './identity.ts'
export { createMesh, type Mesh, type MeshInit, type MeshStats } from './mesh.ts'
export { decodeToken, encodeToken } from './token.ts'
