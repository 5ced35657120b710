import {
  type GossipSub,
  type Message,
  type SubscriptionChangeData,
  TopicValidatorResult,
} from '@libp2p/gossipsub'
import type { Libp2p, PeerId } from '@libp2p/interface'
import { errorMessage } from '../common/errors.ts'
import { createLogThrottle, type Logger } from '../common/logger.ts'
import {
  DEFAULT_DETECTOR,
  type DetectorConfig,
  lastHeardAfterDisconnect,
  type MemberState,
  memberState,
} from './detector.ts'
import { decodeHeartbeat, encodeHeartbeat, HEARTBEAT_TOPIC, type NodeInfo } from './messages.ts'

/** The slices of gossipsub and libp2p that membership uses. */
export type HeartbeatBus = Pick<
  GossipSub,
  'subscribe' | 'unsubscribe' | 'publish' | 'addEventListener' | 'removeEventListener' | 'topicValidators'
>
export type ConnectionEvents = Pick<Libp2p, 'addEventListener' | 'removeEventListener'>

export interface MembershipInit {
  self: PeerId
  bus: HeartbeatBus
  connections: ConnectionEvents
  selfInfo: () => NodeInfo
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
  lastHeard: number
  info: NodeInfo
}

export interface MembershipStats {
  heartbeatsReceived: number
  heartbeatsDropped: number
}

interface Entry {
  info: NodeInfo
  lastHeard: number
}

export class Membership {
  readonly #init: MembershipInit
  readonly #cfg: DetectorConfig
  readonly #now: () => number
  readonly #log: Logger
  readonly #members = new Map<string, Entry>()
  readonly #warnOnce = createLogThrottle(60_000)
  readonly #stats: MembershipStats = { heartbeatsReceived: 0, heartbeatsDropped: 0 }
  #timer: NodeJS.Timeout | undefined
  #soon: NodeJS.Timeout | undefined
  #seq = 0
  #started = false

  constructor(init: MembershipInit) {
    this.#init = init
    this.#cfg = { ...DEFAULT_DETECTOR, ...init.detector }
    this.#now = init.now ?? Date.now
    this.#log = init.logger.child({ subsystem: 'membership' })
  }

  start(): void {
    if (this.#started) return
    this.#started = true
    this.#init.bus.addEventListener('subscription-change', this.#onSubscriptionChange)
    this.#init.connections.addEventListener('peer:disconnect', this.#onDisconnect)
    this.#init.bus.topicValidators.set(HEARTBEAT_TOPIC, this.#onHeartbeat)
    this.#init.bus.subscribe(HEARTBEAT_TOPIC)
    this.#timer = setInterval(() => this.#beat(), this.#cfg.heartbeatMs)
    this.#timer.unref()
    this.#beat()
  }

  stop(): void {
    if (!this.#started) return
    this.#started = false
    clearInterval(this.#timer)
    clearTimeout(this.#soon)
    this.#init.bus.removeEventListener('subscription-change', this.#onSubscriptionChange)
    this.#init.connections.removeEventListener('peer:disconnect', this.#onDisconnect)
    this.#init.bus.topicValidators.delete(HEARTBEAT_TOPIC)
    try {
      this.#init.bus.unsubscribe(HEARTBEAT_TOPIC)
    } catch {
      // the bus may already be stopped
    }
  }

  /** This node's view of the cluster, itself first, then by name. */
  members(): Member[] {
    const now = this.#now()
    const forgetAfter = this.#init.forgetAfterMs ?? 24 * 3600_000
    const self: Member = {
      id: this.#init.self.toString(),
      self: true,
      state: 'alive',
      lastHeard: now,
      info: this.#init.selfInfo(),
    }
    const others: Member[] = []
    for (const [id, e] of this.#members) {
      if (now - e.lastHeard > forgetAfter) {
        this.#members.delete(id)
        continue
      }
      others.push({
        id,
        self: false,
        state: memberState(now, e.lastHeard, this.#cfg),
        lastHeard: e.lastHeard,
        info: e.info,
      })
    }
    // Plain code-unit order: localeCompare would page in ICU collation data on every call.
    others.sort((a, b) =>
      a.info.name < b.info.name ? -1 : a.info.name > b.info.name ? 1 : a.id < b.id ? -1 : 1,
    )
    return [self, ...others]
  }

  stats(): MembershipStats {
    return { ...this.#stats }
  }

  #beat(): void {
    const data = encodeHeartbeat({
      v: 1,
      id: this.#init.self.toString(),
      seq: this.#seq++,
      info: this.#init.selfInfo(),
    })
    this.#init.bus.publish(HEARTBEAT_TOPIC, data).catch((err) => {
      if (this.#warnOnce('publish')) this.#log.debug({ err: errorMessage(err) }, 'heartbeat publish failed')
    })
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
      this.#drop(from, 'a malformed heartbeat')
      return TopicValidatorResult.Reject
    }
    if (hb.id === from && from !== this.#init.self.toString()) {
      this.#stats.heartbeatsReceived++
      if (!this.#members.has(from)) this.#log.info({ peer: from, name: hb.info.name }, 'node joined')
      this.#members.set(from, { info: hb.info, lastHeard: this.#now() })
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

  readonly #onDisconnect = (evt: CustomEvent<PeerId>): void => {
    const e = this.#members.get(evt.detail.toString())
    if (e) e.lastHeard = lastHeardAfterDisconnect(this.#now(), e.lastHeard, this.#cfg)
  }

  #drop(peer: string, what: string): void {
    this.#stats.heartbeatsDropped++
    if (this.#warnOnce(`drop:${peer}`)) this.#log.warn({ peer }, `dropped ${what} from ${peer}`)
  }
}
