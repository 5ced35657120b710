import { connect } from 'node:net'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type { Connection, Libp2p, PeerId, PrivateKey } from '@libp2p/interface'
import { kadDHT, removePublicAddressesMapper } from '@libp2p/kad-dht'
import { noise } from '@libp2p/noise'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { errorMessage, Km1sError } from '../common/errors.ts'
import { nextGridPoint } from '../common/grid.ts'
import { createLogThrottle, type Logger } from '../common/logger.ts'
import { ipOfAddr, isLoopbackAddr, peerIdOfAddr, withoutLoopback } from './addresses.ts'
import {
  backoffMs,
  connectionToKeep,
  DEFAULT_DIAL_POLICY,
  type DialPolicy,
  isHandshakeFailure,
  shouldDial,
} from './dial-policy.ts'
import { gossipMessageId, gossipMessageIdString } from './gossip-id.ts'
import { clusterId } from './identity.ts'
import { libp2pLogger } from './libp2p-logger.ts'
import { unconnectedMdns } from './mdns-unconnected.ts'
import { PeerBook, type PeerBookStore } from './peer-book.ts'
import { clusterProtector } from './pnet.ts'

export interface MeshInit {
  privateKey: PrivateKey
  clusterSecret: Uint8Array
  listen: string[]
  /** Static peers for networks without multicast, with or without `/p2p/<id>`. */
  peers: string[]
  peerBookStore: PeerBookStore
  logger: Logger
  mdns?: boolean
  mdnsIntervalMs?: number
  dialPolicy?: DialPolicy
}

export interface MeshStats {
  connectedPeers: number
  knownPeers: number
  dialFailures: number
  handshakeFailures: number
}

/**
 * Gossipsub tuned for small clusters where every node keeps a connection to every other: flood publishing
 * already reaches every connected subscriber, so a thin mesh (D=2) only carries messages across partial
 * connectivity. The defaults (D=6) cost ~30 % more CPU at 10 nodes for duplicates (docs/mesh.md). No lazy
 * gossip (IHAVE every second to a few peers about the last messages): with every subscriber reached directly
 * it only ever told peers of messages they had, ~4 of an idle agent's ~31 writes a second at 10 nodes;
 * replication's anti-entropy (state/) recovers what a lost message missed.
 */
const GOSSIP_TUNING = { D: 2, Dlo: 1, Dhi: 4, Dlazy: 0, gossipFactor: 0, floodPublish: true } as const

function createLibp2pNode(init: MeshInit) {
  const cluster = clusterId(init.clusterSecret)
  return createLibp2p({
    privateKey: init.privateKey,
    start: false,
    logger: libp2pLogger(),
    addresses: {
      listen: init.listen,
      announceFilter: (addrs: Multiaddr[]) => withoutLoopback(addrs),
    },
    transports: [tcp()],
    connectionProtector: clusterProtector(init.clusterSecret),
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: { dialTimeout: 5_000, maxConnections: 300 },
    // libp2p's monitor opened a stream every 10 s on every connection to ping /ipfs/ping/1.0.0, which km1s
    // peers do not speak (their ping is /km1s/ping): negotiation failed each time, ~8 of an idle agent's ~27
    // socket writes a second at 10 nodes. Liveness is membership's heartbeats, and membership hangs up a
    // connection whose peer it has not heard for 3 dead-times (docs/membership.md).
    connectionMonitor: { enabled: false },
    peerDiscovery:
      init.mdns === false
        ? []
        : [
            // Answers about peers this node is connected to stop there (mdns-unconnected.ts says why).
            unconnectedMdns({
              // The tag is derived from the secret: nodes of other clusters on the same LAN do not even try.
              serviceTag: `_km1s-${cluster}._udp.local`,
              // A newcomer's own query at start is answered at once, and every node hears the multicast
              // answers; the persisted peer book reconnects known peers. So query rarely: with 10 nodes a
              // 10 s interval cost each agent ~1 % of a core in answers (docs/benchmarks.md).
              interval: init.mdnsIntervalMs ?? 60_000,
            }),
          ],
    services: {
      identify: identify({ protocolPrefix: 'km1s' }),
      ping: ping({ protocolPrefix: 'km1s' }),
      dht: kadDHT({
        protocol: '/km1s/lan/kad/1.0.0',
        clientMode: false,
        peerInfoMapper: removePublicAddressesMapper,
        // Not every second while starting: on a LAN every peer connects directly anyway, and when many
        // nodes start together those queries compete with the handshakes for the CPU.
        initialQuerySelfInterval: 10_000,
      }),
      // Unsigned: records carry their own signatures (state/) and heartbeats are bound to the connection
      // they arrive on (membership/), so gossipsub's per-message Ed25519 work would buy nothing.
      pubsub: gossipsub({
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        globalSignaturePolicy: 'StrictNoSign',
        msgIdFn: gossipMessageId,
        msgIdToStrFn: gossipMessageIdString,
        ...GOSSIP_TUNING,
      }),
    },
  })
}

type Libp2pNode = Awaited<ReturnType<typeof createLibp2pNode>>
export type MeshServices = Libp2pNode extends Libp2p<infer S> ? S : never

interface Target {
  peer?: string
  addr?: Multiaddr
  failures: number
  nextAttemptAt: number
  waitingSince: number
  dialing: boolean
  /** Dialed successfully at least once since start. */
  connected?: boolean
}

export class Mesh {
  readonly libp2p: Libp2pNode
  readonly peerId: PeerId
  readonly peerBook: PeerBook
  readonly clusterId: string
  readonly #init: MeshInit
  readonly #log: Logger
  readonly #policy: DialPolicy
  readonly #targets = new Map<string, Target>()
  readonly #warnOnce = createLogThrottle(60_000)
  #timer: NodeJS.Timeout | undefined
  #addresses: string[] | undefined
  #started = false
  #dialFailures = 0
  #handshakeFailures = 0

  private constructor(init: MeshInit, node: Libp2pNode) {
    this.#init = init
    this.libp2p = node
    this.peerId = node.peerId
    this.clusterId = clusterId(init.clusterSecret)
    this.peerBook = new PeerBook(init.peerBookStore)
    this.#log = init.logger.child({ subsystem: 'mesh' })
    this.#policy = init.dialPolicy ?? DEFAULT_DIAL_POLICY
  }

  static async create(init: MeshInit): Promise<Mesh> {
    for (const addr of [...init.listen, ...init.peers]) {
      try {
        multiaddr(addr)
      } catch (cause) {
        throw new Km1sError(
          'ERR_BAD_MULTIADDR',
          `'${addr}' is not a valid multiaddr such as /ip4/192.168.1.20/tcp/4100.`,
          {
            cause,
          },
        )
      }
    }
    return new Mesh(init, await createLibp2pNode(init))
  }

  async start(): Promise<void> {
    if (this.#started) return
    this.#started = true
    await this.peerBook.load()
    const now = Date.now()
    for (const [peer, entry] of this.peerBook.entries()) {
      await this.#learnAddresses(peer, entry.addrs)
      this.#target(peer, { peer, waitingSince: now })
    }
    for (const addr of this.#init.peers) {
      const ma = multiaddr(addr)
      const peer = peerIdOfAddr(ma)
      this.#target(`addr:${addr}`, { addr: ma, peer, waitingSince: now - this.#policy.graceMs })
    }
    const events = this.libp2p
    events.addEventListener('peer:discovery', (evt) => {
      const peer = evt.detail.id.toString()
      if (peer === this.peerId.toString()) return
      const t = this.#target(peer, { peer, waitingSince: Date.now() })
      t.nextAttemptAt = 0
      this.#kick()
    })
    events.addEventListener('peer:identify', (evt) => {
      const peer = evt.detail.peerId.toString()
      const addrs = withoutLoopback(evt.detail.listenAddrs).map((a) => a.toString())
      if (addrs.length === 0) return
      this.peerBook
        .remember(peer, addrs)
        .catch((err) => this.#log.warn({ err: errorMessage(err) }, 'peer book write failed'))
    })
    events.addEventListener('connection:open', (evt) => this.#onConnection(evt.detail))
    events.addEventListener('self:peer:update', () => {
      this.#addresses = undefined
    })
    events.addEventListener('peer:connect', (evt) => {
      const t = this.#target(evt.detail.toString(), { peer: evt.detail.toString(), waitingSince: Date.now() })
      t.failures = 0
      this.#log.info({ peer: evt.detail.toString() }, 'peer connected')
    })
    events.addEventListener('peer:disconnect', (evt) => {
      const t = this.#targets.get(evt.detail.toString())
      if (t) {
        t.waitingSince = Date.now()
        t.nextAttemptAt = 0
      }
      this.#log.info({ peer: evt.detail.toString() }, 'peer disconnected')
    })
    await this.libp2p.start()
    this.#log.info(
      { peer: this.peerId.toString(), cluster: this.clusterId, addrs: this.addresses() },
      'mesh started',
    )
    this.#schedule(0)
  }

  async stop(): Promise<void> {
    if (!this.#started) return
    this.#started = false
    clearTimeout(this.#timer)
    this.#timer = undefined
    await this.libp2p.stop()
  }

  /** Addresses other nodes can dial (loopback removed); cached, heartbeats read them every second. */
  addresses(): string[] {
    this.#addresses ??= this.libp2p.getMultiaddrs().map((a) => a.toString())
    return this.#addresses
  }

  connectedPeers(): PeerId[] {
    return this.libp2p.getPeers()
  }

  stats(): MeshStats {
    const known = new Set<string>()
    for (const t of this.#targets.values()) if (t.peer) known.add(t.peer)
    return {
      connectedPeers: this.libp2p.getPeers().length,
      knownPeers: known.size,
      dialFailures: this.#dialFailures,
      handshakeFailures: this.#handshakeFailures,
    }
  }

  #target(key: string, init: Partial<Target> & { waitingSince: number }): Target {
    let t = this.#targets.get(key)
    if (!t) {
      t = { failures: 0, nextAttemptAt: 0, dialing: false, ...init }
      this.#targets.set(key, t)
    }
    return t
  }

  async #learnAddresses(peer: string, addrs: string[]): Promise<void> {
    try {
      const multiaddrs = addrs.map((a) => multiaddr(a)).filter((a) => !isLoopbackAddr(a))
      await this.libp2p.peerStore.merge(peerIdFromString(peer), { multiaddrs })
    } catch (err) {
      this.#log.debug({ peer, err: errorMessage(err) }, 'ignoring a bad peer book entry')
    }
  }

  #onConnection(conn: Connection): void {
    const self = this.peerId.toString()
    const peer = conn.remotePeer.toString()
    const conns = this.libp2p.getConnections(conn.remotePeer)
    if (conns.length < 2) return
    const keep = connectionToKeep(self, peer, conns)
    for (const c of conns) {
      if (c !== keep) c.close().catch(() => c.abort(new Error('duplicate connection')))
    }
  }

  #schedule(delayMs: number): void {
    if (!this.#started) return
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => this.#tick(), delayMs)
    this.#timer.unref()
  }

  #kick(): void {
    this.#schedule(0)
  }

  #tick(): void {
    if (!this.#started) return
    const now = Date.now()
    const self = this.peerId.toString()
    const connected = new Set(this.libp2p.getPeers().map((p) => p.toString()))
    let waiting = false
    for (const t of this.#targets.values()) {
      if (t.peer && connected.has(t.peer)) continue
      waiting = true
      if (t.dialing || now < t.nextAttemptAt) continue
      if (t.peer && !t.addr && !shouldDial(self, t.peer, now - t.waitingSince, this.#policy)) continue
      void this.#dial(t)
    }
    // Look often while someone is missing; rarely once everyone is connected (events kick the loop).
    // Idle, on the 1 s grid (common/grid.ts), in the wake-up its heartbeats and other timers share.
    this.#schedule(waiting ? 100 : nextGridPoint(Date.now(), 1_000) - Date.now())
  }

  async #dial(t: Target): Promise<void> {
    t.dialing = true
    const target = t.addr ?? peerIdFromString(t.peer ?? '')
    try {
      const conn = await this.libp2p.dial(target, { signal: AbortSignal.timeout(5_000) })
      t.failures = 0
      t.connected = true
      if (t.addr && !t.peer) t.peer = conn.remotePeer.toString()
    } catch (err) {
      t.failures++
      this.#dialFailures++
      t.nextAttemptAt = Date.now() + backoffMs(t.failures, this.#policy)
      const where = t.addr?.toString() ?? t.peer ?? ''
      // With mismatched keys the handshake fails fast or, as often, both sides wait for bytes that never
      // come until the dial times out: then a plain TCP connect tells "answered" from "unreachable".
      // Only for a --peer that never connected: a known member can time out when it is merely busy.
      const probe = t.addr !== undefined && !t.connected && (err as Error).name === 'TimeoutError'
      const answered = isHandshakeFailure(err) || (probe && (await this.#answers(t)))
      if (answered) {
        this.#handshakeFailures++
        if (this.#warnOnce(`handshake:${where}`)) {
          this.#log.warn(
            { peer: t.peer, addr: t.addr?.toString(), err: errorMessage(err) },
            `The peer at ${where} answered but the encrypted handshake failed: it is probably a node of another km1s cluster (joined with a different token).`,
          )
        }
      } else if (this.#warnOnce(`dial:${where}`)) {
        this.#log.debug(
          { peer: t.peer, addr: t.addr?.toString(), err: errorMessage(err), chain: errorChain(err) },
          'dial failed',
        )
      }
    } finally {
      t.dialing = false
    }
  }

  /** Whether the target's TCP port accepts a connection (closed again at once). */
  async #answers(t: Target): Promise<boolean> {
    const addr = t.addr
    const host = addr && ipOfAddr(addr)
    const port = Number(addr?.getComponents().find((c) => c.name === 'tcp')?.value)
    if (!host || !Number.isInteger(port)) return false
    return new Promise((resolve) => {
      const socket = connect({ host, port, timeout: 1_000 })
      const done = (ok: boolean) => {
        socket.destroy()
        resolve(ok)
      }
      socket.once('connect', () => done(true))
      socket.once('error', () => done(false))
      socket.once('timeout', () => done(false))
    })
  }
}

/** The names and messages of an error and its causes, for debug logs. */
function errorChain(err: unknown): string[] {
  const out: string[] = []
  let cur: unknown = err
  while (cur instanceof Error && out.length < 6) {
    out.push(`${cur.name}: ${cur.message}`)
    cur = (cur as { cause?: unknown }).cause
  }
  return out
}

export async function createMesh(init: MeshInit): Promise<Mesh> {
  return Mesh.create(init)
}
