import {
  type GossipSub,
  type Message,
  type SubscriptionChangeData,
  TopicValidatorResult,
} from '@libp2p/gossipsub'
import type { Libp2p, PeerId } from '@libp2p/interface'
import { errorMessage, Km1sError } from '../common/errors.ts'
import { type GridTimer, onGrid } from '../common/grid.ts'
import { createLogThrottle, type Logger } from '../common/logger.ts'
import { canonicalJson, type NodeValue, type Store } from '../state/index.ts'
import {
  DEFAULT_DETECTOR,
  type DetectorConfig,
  lastHeardAfterDisconnect,
  type MemberState,
  memberState,
} from './detector.ts'
import { decodeHeartbeat, encodeHeartbeat, HEARTBEAT_TOPIC } from './messages.ts'

/** The slices of gossipsub and libp2p that membership uses. */
export type HeartbeatBus = Pick<
  GossipSub,
  'subscribe' | 'unsubscribe' | 'publish' | 'addEventListener' | 'removeEventListener' | 'topicValidators'
>
export type ConnectionEvents = Pick<Libp2p, 'addEventListener' | 'removeEventListener'> &
  Partial<Pick<Libp2p, 'getConnections' | 'hangUp'>>

export interface MembershipInit {
  self: PeerId
  bus: HeartbeatBus
  connections: ConnectionEvents
  store: Store
  /** What this node is, for its `node/` record. */
  selfInfo: () => NodeValue
  logger: Logger
  detector?: Partial<DetectorConfig>
  /** Dead nodes leave the list after this long without a heartbeat. */
  forgetAfterMs?: number
  now?: () => number
}

export interface Member {
  id: string
  self: boolean
  state: MemberState
  /** 0 when this node has never heard from it. */
  lastHeard: number
  info: NodeValue
}

export interface MembershipStats {
  heartbeatsReceived: number
  heartbeatsDropped: number
  /** Connections hung up because the node at the other end was not heard on them (see #healDeaf). */
  deafReconnects: number
}

const NODE_PREFIX = 'node/'
export const DEFAULT_FORGET_AFTER_MS = 24 * 3600_000

export class Membership {
  readonly #init: MembershipInit
  readonly #cfg: DetectorConfig
  readonly #now: () => number
  readonly #log: Logger
  readonly #selfId: string
  readonly #heard = new Map<string, number>()
  /** The digest fingerprint of each member's last heartbeat, when it carried one. */
  readonly #fingerprints = new Map<string, string>()
  readonly #warnOnce = createLogThrottle(60_000)
  readonly #stats: MembershipStats = { heartbeatsReceived: 0, heartbeatsDropped: 0, deafReconnects: 0 }
  readonly #hungUp = new Map<string, number>()
  #timer: GridTimer | undefined
  #recordTimer: GridTimer | undefined
  #soon: NodeJS.Timeout | undefined
  #unwatch: (() => void) | undefined
  // Gossipsub drops a message whose bytes it saw in the last minutes (unsigned messages are identified by
  // a hash of their data), so a restarted node must not repeat its old sequence numbers: start at the clock.
  #seq = Date.now()
  #started = false

  constructor(init: MembershipInit) {
    this.#init = init
    this.#cfg = { ...DEFAULT_DETECTOR, ...init.detector }
    this.#now = init.now ?? Date.now
    this.#log = init.logger.child({ subsystem: 'membership' })
    this.#selfId = init.self.toString()
  }

  async start(): Promise<void> {
    if (this.#started) return
    this.#started = true
    await this.#writeOwnRecord()
    this.#unwatch = this.#init.store.onChange((change) => {
      if (change.key === this.#ownKey() && change.record.deleted) {
        // Someone ran `km1s forget` on this node while it is alive: say again that it exists.
        this.#log.warn(
          { by: change.record.author },
          'this node was forgotten by another node; announcing it again',
        )
        void this.#writeOwnRecord()
      } else if (change.key.startsWith(NODE_PREFIX) && change.origin === 'remote' && !change.record.deleted) {
        const value = change.record.value as NodeValue
        this.#log.debug(
          { peer: change.key.slice(NODE_PREFIX.length), name: value.name },
          'node record updated',
        )
      }
    })
    this.#init.bus.addEventListener('subscription-change', this.#onSubscriptionChange)
    this.#init.connections.addEventListener('peer:disconnect', this.#onDisconnect)
    this.#init.connections.addEventListener('peer:identify', this.#onIdentify)
    this.#init.bus.topicValidators.set(HEARTBEAT_TOPIC, this.#onHeartbeat)
    this.#init.bus.subscribe(HEARTBEAT_TOPIC)
    // On the grid (common/grid.ts): nodes whose clocks agree beat together.
    this.#timer = onGrid(this.#cfg.heartbeatMs, () => this.#beat())
    // Addresses change (DHCP, a new interface): keep the record true, checked cheaply every 10 s.
    this.#recordTimer = onGrid(10_000, () => void this.#writeOwnRecord())
    this.#beat()
  }

  stop(): void {
    if (!this.#started) return
    this.#started = false
    this.#timer?.stop()
    this.#recordTimer?.stop()
    clearTimeout(this.#soon)
    this.#unwatch?.()
    this.#init.bus.removeEventListener('subscription-change', this.#onSubscriptionChange)
    this.#init.connections.removeEventListener('peer:disconnect', this.#onDisconnect)
    this.#init.connections.removeEventListener('peer:identify', this.#onIdentify)
    this.#init.bus.topicValidators.delete(HEARTBEAT_TOPIC)
    try {
      this.#init.bus.unsubscribe(HEARTBEAT_TOPIC)
    } catch {
      // the bus may already be stopped
    }
  }

  /** This node's view of the cluster: every node record, with liveness from heartbeats; itself first. */
  members(opts: { includeForgotten?: boolean } = {}): Member[] {
    const now = this.#now()
    const forgetAfter = this.#init.forgetAfterMs ?? DEFAULT_FORGET_AFTER_MS
    const self: Member = {
      id: this.#selfId,
      self: true,
      state: 'alive',
      lastHeard: now,
      info: this.#init.selfInfo(),
    }
    const others: Member[] = []
    for (const record of this.#init.store.list(NODE_PREFIX)) {
      const id = record.key.slice(NODE_PREFIX.length)
      if (id === this.#selfId) continue
      const heard = this.#heard.get(id) ?? 0
      // A node never heard since this agent started counts from its record's clock.
      if (!opts.includeForgotten && now - (heard || record.hlc.wall) > forgetAfter) continue
      const state = heard ? memberState(now, heard, this.#cfg) : 'dead'
      others.push({ id, self: false, state, lastHeard: heard, info: record.value as NodeValue })
    }
    // Plain code-unit order: localeCompare would page in ICU collation data on every call.
    others.sort((a, b) =>
      a.info.name < b.info.name ? -1 : a.info.name > b.info.name ? 1 : a.id < b.id ? -1 : 1,
    )
    return [self, ...others]
  }

  /** Removes a node that is gone for good from every node's list (`km1s forget`). */
  async forget(id: string): Promise<void> {
    if (id === this.#selfId) {
      throw new Km1sError('ERR_INVALID', 'A node cannot forget itself; run km1s forget on another node.')
    }
    const member = this.members({ includeForgotten: true }).find((m) => m.id === id)
    if (member && member.state !== 'dead') {
      throw new Km1sError(
        'ERR_NODE_ALIVE',
        `Node ${member.info.name} is ${member.state}; stop its agent first, then forget it once it is dead.`,
      )
    }
    const store = this.#init.store
    const keys = [`node/${id}`, `label/${id}`, ...store.list(`status/${id}/`).map((r) => r.key)]
    for (const key of keys) if (store.get(key)) await store.delete(key)
    await store.flush()
    this.#heard.delete(id)
    this.#fingerprints.delete(id)
  }

  stats(): MembershipStats {
    return { ...this.#stats }
  }

  #ownKey(): string {
    return `${NODE_PREFIX}${this.#selfId}`
  }

  async #writeOwnRecord(): Promise<void> {
    if (!this.#started) return
    const info = this.#init.selfInfo()
    const current = this.#init.store.get(this.#ownKey())
    if (current && canonicalJson(current.value) === canonicalJson(info)) return
    try {
      await this.#init.store.put(this.#ownKey(), info, { durable: true })
    } catch (err) {
      this.#log.error({ err: errorMessage(err) }, "writing this node's record failed")
    }
  }

  /**
   * Whether `id`'s last heartbeat, heard within the suspect time, carried the fingerprint of this node's
   * own state digest: then the two replicas hold the same records and need no anti-entropy session.
   */
  inSyncWith(id: string): boolean {
    const theirs = this.#fingerprints.get(id)
    if (theirs === undefined || this.#now() - (this.#heard.get(id) ?? 0) >= this.#cfg.suspectMs) return false
    return theirs === this.#init.store.fingerprint()
  }

  #beat(): void {
    const fp = this.#init.store.fingerprint()
    const data = encodeHeartbeat({ v: 1, id: this.#selfId, seq: this.#seq++, ...(fp ? { fp } : {}) })
    this.#init.bus.publish(HEARTBEAT_TOPIC, data).catch((err) => {
      if (this.#warnOnce('publish')) this.#log.debug({ err: errorMessage(err) }, 'heartbeat publish failed')
    })
    this.#healDeaf()
  }

  /**
   * A connection to a member that has carried none of its heartbeats for three dead-times is hung up, and
   * the mesh's stay-connected loop dials again. Seen in the lab after restarts and heals: a pair stayed
   * connected for over a minute while each side's gossipsub never learned the other's subscription, so
   * both called the other dead and the scheduler ran replicas twice. A new connection exchanges
   * subscriptions afresh. Fresh connections are left alone, and each peer is hung up at most once a period.
   */
  #healDeaf(): void {
    const { getConnections, hangUp } = this.#init.connections
    if (!getConnections || !hangUp) return
    const now = this.#now()
    const limit = 3 * this.#cfg.deadMs
    for (const conn of getConnections.call(this.#init.connections)) {
      const id = conn.remotePeer.toString()
      if (id === this.#selfId || !this.#init.store.get(`${NODE_PREFIX}${id}`)) continue
      const heard = this.#heard.get(id) ?? 0
      if (now - conn.timeline.open < limit || now - heard < limit) continue
      if (now - (this.#hungUp.get(id) ?? 0) < limit) continue
      this.#hungUp.set(id, now)
      this.#stats.deafReconnects++
      this.#log.warn(
        { peer: id, silentMs: heard ? now - heard : null },
        'connected to a node but not hearing its heartbeats: reconnecting',
      )
      hangUp.call(this.#init.connections, conn.remotePeer).catch(() => {})
    }
  }

  /**
   * Heartbeats are consumed in the topic validator, where the peer that handed us the message is known.
   * A heartbeat counts only when it arrives from its author over the author's own connection: it says
   * "I am reachable from you", needs no signature (the connection is authenticated by noise) and is
   * never forwarded (flood publishing already hands it to every connected member). Unsigned messages and
   * no forwarding cut an agent's idle CPU in a 10-node cluster by about a third (docs/benchmarks.md).
   */
  readonly #onHeartbeat = (peer: PeerId, msg: Message): TopicValidatorResult => {
    const from = peer.toString()
    const hb = decodeHeartbeat(msg.data)
    if (!hb) {
      this.#stats.heartbeatsDropped++
      if (this.#warnOnce(`drop:${from}`))
        this.#log.warn({ peer: from }, `dropped a malformed heartbeat from ${from}`)
      return TopicValidatorResult.Reject
    }
    if (hb.id === from && from !== this.#selfId) {
      this.#stats.heartbeatsReceived++
      if (!this.#heard.has(from)) this.#log.info({ peer: from }, 'heard from a node')
      this.#heard.set(from, this.#now())
      if (hb.fp) this.#fingerprints.set(from, hb.fp)
      else this.#fingerprints.delete(from)
    }
    return TopicValidatorResult.Ignore
  }

  readonly #onSubscriptionChange = (evt: CustomEvent<SubscriptionChangeData>): void => {
    // A peer that just subscribed hears from us now rather than at our next beat. Not synchronously:
    // gossipsub adds the peer to the topic only after this event, and a beat sent now would miss it.
    if (evt.detail.subscriptions.some((s) => s.topic === HEARTBEAT_TOPIC && s.subscribe)) {
      this.#soon ??= setTimeout(() => {
        this.#soon = undefined
        if (this.#started) this.#beat()
      }, 10)
    }
  }

  /**
   * A peer that just finished identify with us is as alive as a heartbeat says: counting it saves the
   * wait for gossipsub's streams (opened one peer at a time) when many nodes start together.
   */
  readonly #onIdentify = (evt: CustomEvent<{ peerId: PeerId }>): void => {
    const id = evt.detail.peerId.toString()
    if (id !== this.#selfId) this.#heard.set(id, this.#now())
  }

  readonly #onDisconnect = (evt: CustomEvent<PeerId>): void => {
    const id = evt.detail.toString()
    const heard = this.#heard.get(id)
    if (heard !== undefined) this.#heard.set(id, lastHeardAfterDisconnect(this.#now(), heard, this.#cfg))
    this.#fingerprints.delete(id)
  }
}
