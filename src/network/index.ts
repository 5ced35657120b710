// network/: the node's container network. container-net.ts: a container's namespace, veth and address on the
// bridge; subnet.ts: the /24 claim; nftables.ts: the one km1s table; wireguard.ts + device.ts: the overlay;
// overlay.ts: NodeNetwork, which applies all of it from the replicated records. docs/network.md.
export * from './container-net.ts'
export { WgDevice, type WgDeviceStats, type WgKind } from './device.ts'
export { applyNftables, NFT_TABLE, type NftablesInput, renderNftables } from './nftables.ts'
export {
  claimRecordAction,
  type NetworkStatus,
  type NetworkStore,
  type NodeDirectory,
  NodeNetwork,
  type NodeNetworkInit,
  type OverlayLinkState,
  type PeerOverlay,
  type PeerWanted,
  planOverlayLink,
  wantedPeers,
} from './overlay.ts'
export * from './subnet.ts'
export * from './wireguard.ts'
