// mDNS discovery that tells libp2p only about peers this node is not connected to.
//
// Every node multicasts its answer to a query, so every node hears every answer: when a node starts, each of
// the others handles an answer from all the rest, and libp2p merges each one into its peer store (load,
// decode, compare, save) before it emits `peer:discovery`. For a peer with an open connection that work
// learns nothing (identify already told its addresses) and nobody acts on the event (mesh.ts dials peers it
// is not connected to). Answers about other peers pass as they come; after a split heals, the peers across it
// are not connected, so their answers pass too.
import {
  type PeerDiscovery,
  type PeerDiscoveryEvents,
  type PeerId,
  peerDiscoverySymbol,
  type Startable,
  serviceCapabilities,
} from '@libp2p/interface'
import { type MulticastDNSComponents, type MulticastDNSInit, mdns } from '@libp2p/mdns'
import { TypedEventEmitter } from 'main-event'

/** What libp2p hands a peer discovery module, as far as this one reads it. */
export type UnconnectedMdnsComponents = MulticastDNSComponents & {
  connectionManager: { getConnections(peer: PeerId): unknown[] }
}

class UnconnectedDiscovery
  extends TypedEventEmitter<PeerDiscoveryEvents>
  implements PeerDiscovery, Startable
{
  readonly [peerDiscoverySymbol] = this
  readonly [Symbol.toStringTag] = 'km1s-mdns'
  readonly [serviceCapabilities] = ['@libp2p/peer-discovery']
  readonly #inner: PeerDiscovery & Partial<Startable>
  /** Discoveries dropped because the peer was connected. */
  dropped = 0

  constructor(inner: PeerDiscovery, connected: (peer: PeerId) => boolean) {
    super()
    this.#inner = inner
    inner.addEventListener('peer', (evt) => {
      if (connected(evt.detail.id)) {
        this.dropped++
        return
      }
      this.safeDispatchEvent('peer', { detail: evt.detail })
    })
  }

  async start(): Promise<void> {
    await this.#inner.start?.()
  }

  async stop(): Promise<void> {
    await this.#inner.stop?.()
  }
}

/** `inner`'s discoveries of peers for which `connected` is false; started and stopped with it. */
export function withoutConnected(
  inner: PeerDiscovery,
  connected: (peer: PeerId) => boolean,
): PeerDiscovery & Startable & { readonly dropped: number } {
  return new UnconnectedDiscovery(inner, connected)
}

/** `mdns(init)`, but answers about peers with an open connection never reach libp2p. */
export function unconnectedMdns(
  init: MulticastDNSInit,
): (components: UnconnectedMdnsComponents) => PeerDiscovery & Startable {
  const factory = mdns(init)
  return (components) =>
    withoutConnected(
      factory(components),
      (peer) => components.connectionManager.getConnections(peer).length > 0,
    )
}
