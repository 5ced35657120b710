// mDNS discovery that tells libp2p only about peers this node is not connected to.
//
// Every node multicasts its answer to a query, so every node hears every answer: when a node starts, each of
// the others handles an answer from all the rest, and libp2p merges each one into its peer store (load,
// decode, compare, save) before it emits `peer:discovery`. For a peer with an open connection that work
// learns nothing (identify already told its addresses) and nobody acts on the event (mesh.ts dials peers it
// is not connected to). Answers about other peers pass as they come; after a split heals, the peers across it
// are not connected, so their answers pass too.
//
// The answers about connected peers are dropped as they arrive, before @libp2p/mdns parses them: it decodes
// every address and the peer id (base58, in JavaScript) first, which cost ~4 % of an idle agent's CPU
// without the optimizing compilers, for the query round each node sends every minute. The wrapper
// replaces that instance's response handler before it starts (`dropAnswersEarly`); the event filter stays
// for whatever the early check lets through.
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
  connectionManager: { getConnections(): Array<{ remotePeer: PeerId }> }
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
): PeerDiscovery & Startable & { dropped: number } {
  return new UnconnectedDiscovery(inner, connected)
}

/** One record of a multicast-dns packet, as far as this module reads it. */
interface MdnsRecord {
  type: string
  data?: unknown
}

/** The parts of a multicast-dns response this module reads. */
export interface MdnsResponse {
  answers?: MdnsRecord[]
  additionals?: MdnsRecord[]
}

const DNSADDR = 'dnsaddr='
const P2P = '/p2p/'

/**
 * The peer id an mDNS answer is about, as @libp2p/mdns finds it: the last `/p2p/` part of the first
 * `dnsaddr=` TXT string, answers before additionals. Undefined when there is none; the string is not checked.
 */
export function answeredPeer(rsp: MdnsResponse): string | undefined {
  for (const rec of [...(rsp.answers ?? []), ...(rsp.additionals ?? [])]) {
    if (rec.type !== 'TXT' || rec.data == null) continue
    for (const d of Array.isArray(rec.data) ? rec.data : [rec.data]) {
      const s = String(d)
      if (!s.startsWith(DNSADDR)) continue
      const at = s.lastIndexOf(P2P)
      return at < 0 ? undefined : s.slice(at + P2P.length)
    }
  }
  return undefined
}

/** What @libp2p/mdns's discovery object has that this module replaces. */
type MdnsHandlers = { _onMdnsResponse?: (rsp: MdnsResponse, ...rest: unknown[]) => void }

/**
 * Makes `inner` (an unstarted @libp2p/mdns discovery) drop the answers about peers for which `connected` is
 * true before it parses them, calling `onDrop` for each. False when `inner` has no response handler to
 * replace (a changed @libp2p/mdns: the unit test fails then), and it is left as it was.
 */
export function dropAnswersEarly(
  inner: PeerDiscovery,
  connected: (peer: string) => boolean,
  onDrop: () => void,
): boolean {
  const handlers = inner as PeerDiscovery & MdnsHandlers
  const respond = handlers._onMdnsResponse
  if (typeof respond !== 'function') return false
  handlers._onMdnsResponse = (rsp, ...rest) => {
    const peer = answeredPeer(rsp)
    if (peer !== undefined && connected(peer)) {
      onDrop()
      return
    }
    respond.call(inner, rsp, ...rest)
  }
  return true
}

/** `mdns(init)`, but answers about peers with an open connection never reach libp2p. */
export function unconnectedMdns(
  init: MulticastDNSInit,
): (components: UnconnectedMdnsComponents) => PeerDiscovery & Startable {
  const factory = mdns(init)
  return (components) => {
    const { connectionManager } = components
    const connected = (peer: string) =>
      connectionManager.getConnections().some((c) => c.remotePeer.toString() === peer)
    const inner = factory(components)
    const outer = withoutConnected(inner, (peer) => connected(peer.toString()))
    dropAnswersEarly(inner, connected, () => outer.dropped++)
    return outer
  }
}
