// Replication of the store between nodes: every local write published on gossipsub, and an anti-entropy
// session (sync-frames.ts) on every new connection, for every connected peer a local write's gossip did not
// reach, and every 30 s unless the peer's heartbeat says its digest equals ours, because gossip alone loses
// messages across a split. Everything from the network passes Store.applyRemote; nothing here trusts a peer.
import type { GossipSub, Message, SubscriptionChangeData } from '@libp2p/gossipsub'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import { type LengthPrefixedStream, lpStream } from '@libp2p/utils'
import { errorMessage } from '../common/errors.ts'
import { type GridTimer, onGrid } from '../common/grid.ts'
import type { Logger } from '../common/logger.ts'
import { decodeDigest, diffDigests, recordsInBuckets } from './digest.ts'
import { decodeRecord, encodeRecord, fromWire, toWire } from './record.ts'
import type { Store } from './store.ts'
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  MAX_FRAME_BYTES,
  MAX_RECORDS_PER_SESSION,
  recordFrames,
  SYNC_PROTOCOL,
} from './sync-frames.ts'

export const STATE_TOPIC = 'km1s/state/1'

export interface ReplicationInit {
  store: Store
  libp2p: Pick<
    Libp2p,
    | 'peerId'
    | 'handle'
    | 'unhandle'
    | 'dialProtocol'
    | 'getPeers'
    | 'addEventListener'
    | 'removeEventListener'
  >
  pubsub: Pick<
    GossipSub,
    'subscribe' | 'unsubscribe' | 'publish' | 'topicValidators' | 'addEventListener' | 'removeEventListener'
  >
  logger: Logger
  syncIntervalMs?: number
  sessionTimeoutMs?: number
  /** How long after a connection a session runs anyway if none has (CONNECT_SYNC_MS). */
  connectSyncMs?: number
  /**
   * Whether `peer` is known to hold the same records (membership: its heartbeat carried our digest's
   * fingerprint). The periodic session with such a peer is skipped; without this every round runs.
   */
  inSync?: (peer: string) => boolean
}

/**
 * Whether this node starts the periodic session with `peer`: the one with the smaller id does, as it dials
 * (mesh/dial-policy.ts). A session is two-way, so one per pair and round leaves both with the union. With
 * both sides starting one, the rounds were ~10 % of an idle agent's CPU profile without the optimizing
 * compilers.
 */
export function startsRound(self: string, peer: string): boolean {
  return self < peer
}

/** See `#onConnect`. */
export const CONNECT_SYNC_MS = 2_000

/**
 * The connected peers a gossiped record did not reach: gossipsub sends only to peers it knows subscribed
 * and has an outbound stream to, and both come a moment after a connection.
 */
export function unreached<P extends { toString(): string }>(connected: P[], recipients: P[]): P[] {
  const reached = new Set(recipients.map(String))
  return connected.filter((peer) => !reached.has(peer.toString()))
}

export interface ReplicationStats {
  published: number
  syncSessions: number
  /** Periodic sessions not run because the peer was in sync. */
  roundsSkipped: number
  syncFailures: number
  recordsSent: number
  recordsReceived: number
}

class SyncAbort extends Error {
  override readonly name = 'SyncAbort'
}

export class Replication {
  readonly #init: ReplicationInit
  readonly #log: Logger
  readonly #inFlight = new Set<string>()
  /** Peers to sync with once more when their session in flight ends: something changed meanwhile. */
  readonly #again = new Set<string>()
  /** When the last session with each peer ended well, as initiator or responder (ms). */
  readonly #synced = new Map<string, number>()
  /** Sessions each peer started with this node that have not ended yet. */
  readonly #answering = new Map<string, number>()
  /** When each peer's current connection opened (ms). */
  readonly #connectedAt = new Map<string, number>()
  readonly #stats: ReplicationStats = {
    published: 0,
    syncSessions: 0,
    roundsSkipped: 0,
    syncFailures: 0,
    recordsSent: 0,
    recordsReceived: 0,
  }
  readonly #controller = new AbortController()
  #timer: GridTimer | undefined
  #unsubscribe: (() => void) | undefined
  #started = false
  /** This node's peer id, for `startsRound`. */
  readonly #self: string

  constructor(init: ReplicationInit) {
    this.#init = init
    this.#log = init.logger.child({ subsystem: 'state' })
    this.#self = init.libp2p.peerId.toString()
  }

  async start(): Promise<void> {
    if (this.#started) return
    this.#started = true
    const { libp2p, pubsub, store } = this.#init
    pubsub.topicValidators.set(STATE_TOPIC, this.#onGossip)
    pubsub.subscribe(STATE_TOPIC)
    this.#unsubscribe = store.onChange((change) => {
      if (change.origin !== 'local') return
      this.#stats.published++
      pubsub.publish(STATE_TOPIC, encodeRecord(change.record)).then(
        ({ recipients }) => this.#catchUp(recipients),
        (err) => {
          this.#log.debug({ err: errorMessage(err) }, 'publishing a record failed; sessions will carry it')
          this.#catchUp([])
        },
      )
    })
    await libp2p.handle(SYNC_PROTOCOL, (stream, connection) => this.#respond(stream, connection.remotePeer), {
      maxInboundStreams: 4,
    })
    libp2p.addEventListener('peer:connect', this.#onConnect)
    pubsub.addEventListener('subscription-change', this.#onSubscriptionChange)
    this.#timer = onGrid(this.#init.syncIntervalMs ?? 30_000, () => {
      for (const peer of libp2p.getPeers()) {
        const key = peer.toString()
        if (!startsRound(this.#self, key)) continue
        // In an idle 10-node lab a round cost each agent ~30 socket writes (strace), for nothing.
        if (this.#init.inSync?.(key)) this.#stats.roundsSkipped++
        else void this.syncWith(peer)
      }
    })
    // Connections made while the mesh started, before this listened for them.
    for (const peer of libp2p.getPeers()) void this.syncWith(peer)
  }

  async stop(): Promise<void> {
    if (!this.#started) return
    this.#started = false
    this.#timer?.stop()
    this.#controller.abort()
    this.#unsubscribe?.()
    this.#init.libp2p.removeEventListener('peer:connect', this.#onConnect)
    this.#init.pubsub.removeEventListener('subscription-change', this.#onSubscriptionChange)
    this.#init.pubsub.topicValidators.delete(STATE_TOPIC)
    try {
      this.#init.pubsub.unsubscribe(STATE_TOPIC)
      await this.#init.libp2p.unhandle(SYNC_PROTOCOL)
    } catch {
      // libp2p may already be stopping
    }
  }

  stats(): ReplicationStats {
    return { ...this.#stats }
  }

  /**
   * A new connection is synced when the peer's subscription arrives (below), a moment later, by the side
   * with the smaller id; a session is two-way, so more at connect only repeated it (~4 % of the CPU of ten
   * agents starting together: docs/state.md). Should that side have had no session with the peer by
   * CONNECT_SYNC_MS (its gossip never heard the subscription), it runs one then.
   */
  readonly #onConnect = (evt: CustomEvent<PeerId>): void => {
    const peer = evt.detail
    const key = peer.toString()
    const since = Date.now()
    this.#connectedAt.set(key, since)
    if (!startsRound(this.#self, key)) return
    const timer = setTimeout(() => {
      if (this.#started && !this.#covered(key, since) && this.#isConnected(peer)) void this.syncWith(peer)
    }, this.#init.connectSyncMs ?? CONNECT_SYNC_MS)
    timer.unref()
  }

  /**
   * Gossip reaches only peers known to have subscribed, and a peer's subscription arrives a moment after
   * its connection. A record written in between (every node writes its own record as it starts) would
   * wait for the 30 s round; a session when the subscription arrives carries it at once, unless one since
   * the connection already has or is under way. One session per pair does, both ways: the side with the
   * smaller id starts it, as it starts the rounds. Records this node writes while a peer is not yet reached
   * by gossip go by a session of their own (`#catchUp`). Two sessions per pair were ~3 % of the CPU of ten
   * agents starting together, which is what the start of a cluster waits on (docs/state.md); with twenty,
   * whose subscriptions come seconds late, the fallback at connect ran on both sides as well, three per pair.
   */
  readonly #onSubscriptionChange = (evt: CustomEvent<SubscriptionChangeData>): void => {
    if (!evt.detail.subscriptions.some((s) => s.topic === STATE_TOPIC && s.subscribe)) return
    const peer = evt.detail.peerId
    const key = peer.toString()
    if (!startsRound(this.#self, key)) return
    if (!this.#covered(key, this.#connectedAt.get(key) ?? 0)) void this.syncWith(peer)
  }

  /** Whether a session with `key` is under way, either way, or one ended at or after `since` (ms). */
  #covered(key: string, since: number): boolean {
    return (
      this.#inFlight.has(key) || (this.#answering.get(key) ?? 0) > 0 || (this.#synced.get(key) ?? 0) >= since
    )
  }

  /**
   * A record of this node's own that gossip did not hand to every connected peer (one whose subscription or
   * gossip stream is not there yet, right after a connection; a peer whose gossip never subscribed) goes to
   * the others by a session now, not at the next round: `km1s push` on one node and `km1s pull` on a node
   * that just restarted must not wait 30 s. A burst of writes costs one session more per peer at most
   * (`syncWith` runs one again after the one in flight).
   */
  #catchUp(recipients: PeerId[]): void {
    if (!this.#started) return
    for (const peer of unreached(this.#init.libp2p.getPeers(), recipients)) void this.syncWith(peer)
  }

  /** Gossip: one record per message; valid and newer → applied and forwarded, else not forwarded. */
  readonly #onGossip = async (peer: PeerId, msg: Message): Promise<TopicValidatorResult> => {
    const from = peer.toString()
    const decoded = decodeRecord(msg.data)
    if (!decoded.ok) {
      this.#init.store.drop(decoded.reason === 'oversized' ? 'oversized' : 'garbage', from)
      return TopicValidatorResult.Reject
    }
    const result = await this.#init.store.applyRemote(decoded.record, from)
    if (result === 'applied') return TopicValidatorResult.Accept
    return result === 'stale' ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject
  }

  /**
   * One anti-entropy session with `peer`, as the initiator. Never throws. A failed session is retried
   * soon (the peer may not have registered the protocol yet while it starts), then left to the 30 s round.
   */
  async syncWith(peer: PeerId, attempt = 0): Promise<void> {
    const key = peer.toString()
    if (!this.#started) return
    if (this.#inFlight.has(key)) {
      this.#again.add(key)
      return
    }
    this.#inFlight.add(key)
    const signal = AbortSignal.any([
      this.#controller.signal,
      AbortSignal.timeout(this.#init.sessionTimeoutMs ?? 20_000),
    ])
    let stream: Stream | undefined
    try {
      stream = await this.#init.libp2p.dialProtocol(peer, SYNC_PROTOCOL, { signal })
      const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
      const send = (f: Frame) => lp.write(encodeFrame(f), { signal })
      const read = () => this.#readFrame(lp, signal, key)
      await send({ t: 'digest', d: Buffer.from(this.#init.store.digest()).toString('base64') })
      const diff = await read()
      if (diff.t !== 'diff') throw this.#garbage(key, 'expected a diff frame')
      await this.#receiveRecords(read, key)
      await this.#sendBuckets(diff.b, send)
      await stream.close({ signal })
      this.#synced.set(key, Date.now())
      this.#stats.syncSessions++
    } catch (err) {
      this.#stats.syncFailures++
      stream?.abort(err instanceof Error ? err : new Error(String(err)))
      if (!this.#controller.signal.aborted) {
        this.#log.debug({ peer: key, err: errorMessage(err), attempt }, 'sync session failed')
        if (attempt < 3) {
          const retry = setTimeout(
            () => {
              if (this.#isConnected(peer)) void this.syncWith(peer, attempt + 1)
            },
            500 * 3 ** attempt,
          )
          retry.unref()
        }
      }
    } finally {
      this.#inFlight.delete(key)
      if (this.#again.delete(key) && this.#isConnected(peer)) {
        void this.syncWith(peer)
      }
    }
  }

  #isConnected(peer: PeerId): boolean {
    return this.#init.libp2p.getPeers().some((p) => p.equals(peer))
  }

  async #respond(stream: Stream, remote: PeerId): Promise<void> {
    const key = remote.toString()
    this.#answering.set(key, (this.#answering.get(key) ?? 0) + 1)
    const signal = AbortSignal.any([
      this.#controller.signal,
      AbortSignal.timeout(this.#init.sessionTimeoutMs ?? 20_000),
    ])
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
      const send = (f: Frame) => lp.write(encodeFrame(f), { signal })
      const read = () => this.#readFrame(lp, signal, key)
      const first = await read()
      if (first.t !== 'digest') throw this.#garbage(key, 'expected a digest frame')
      const theirs = decodeDigest(new Uint8Array(Buffer.from(first.d, 'base64')))
      if (!theirs) throw this.#garbage(key, 'a digest of the wrong size')
      const buckets = diffDigests(this.#init.store.digest(), theirs)
      await send({ t: 'diff', b: buckets })
      await this.#sendBuckets(buckets, send)
      await this.#receiveRecords(read, key)
      await stream.close({ signal })
      this.#synced.set(key, Date.now())
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      if (!this.#controller.signal.aborted)
        this.#log.debug({ peer: key, err: errorMessage(err) }, 'sync session failed')
    } finally {
      const n = (this.#answering.get(key) ?? 1) - 1
      if (n > 0) this.#answering.set(key, n)
      else this.#answering.delete(key)
    }
  }

  /** The next frame; bytes that are not one, or a length prefix past the limit, are garbage. */
  async #readFrame(lp: LengthPrefixedStream, signal: AbortSignal, from: string): Promise<Frame> {
    let bytes: Uint8Array
    try {
      bytes = (await lp.read({ signal })).subarray()
    } catch (err) {
      if (/^Invalid(Data|Message)Length/.test((err as Error).name))
        throw this.#garbage(from, 'a frame longer than allowed')
      throw err
    }
    const frame = decodeFrame(bytes)
    if (!frame) throw this.#garbage(from, 'bytes that are not a sync frame')
    return frame
  }

  #garbage(from: string, what: string): SyncAbort {
    this.#init.store.drop('garbage', from)
    return new SyncAbort(`peer ${from} sent ${what}`)
  }

  async #sendBuckets(buckets: number[], send: (f: Frame) => Promise<void>): Promise<void> {
    const records = recordsInBuckets(this.#init.store.all(), buckets).slice(0, MAX_RECORDS_PER_SESSION)
    for (const frame of recordFrames(records.map(toWire))) await send(frame)
    await send({ t: 'end' })
    this.#stats.recordsSent += records.length
  }

  async #receiveRecords(read: () => Promise<Frame>, from: string): Promise<void> {
    let count = 0
    for (;;) {
      const frame = await read()
      if (frame.t === 'end') return
      if (frame.t !== 'records') throw this.#garbage(from, `an unexpected ${frame.t} frame`)
      count += frame.r.length
      if (count > MAX_RECORDS_PER_SESSION) throw this.#garbage(from, 'more records than a session allows')
      for (const wire of frame.r) {
        const decoded = fromWire(wire)
        if (!decoded.ok) {
          this.#init.store.drop('malformed', from)
          continue
        }
        if ((await this.#init.store.applyRemote(decoded.record, from)) === 'applied')
          this.#stats.recordsReceived++
      }
    }
  }
}
