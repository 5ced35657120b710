// The replicated map on one node: the records in memory, persisted to LevelDB behind (in batches), a
// hybrid logical clock for local writes, and the only gate through which remote records enter.
import { EventEmitter, on } from 'node:events'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { AbstractSublevel } from 'abstract-level'
import { errorMessage, Km1sError } from '../common/errors.ts'
import { createLogThrottle, type Logger } from '../common/logger.ts'
import { computeDigest, type Digest, digestFingerprint } from './digest.ts'
import { compareHlc, type Hlc, receive, tick, ZERO_HLC } from './hlc.ts'
import { collectTombstones, supersedes, TOMBSTONE_HORIZON_MS } from './merge.ts'
import {
  checkRecord,
  type DropReason,
  fromWire,
  type JsonValue,
  type SignedRecord,
  toWire,
  type WireRecord,
} from './record.ts'
import { signRecord, validateIncoming } from './sign.ts'

export const SCHEMA_VERSION = 1
/** See `Store.fingerprint`. */
export const DIGEST_QUIET_MS = 2_000

/** classic-level's fsync option; abstract-level's types do not list it, sublevels pass it through. */
const SYNC_WRITE = { sync: true } as unknown as Parameters<RecordsDb['put']>[2]

// biome-ignore lint/suspicious/noExplicitAny: the parent database type does not matter here
export type RecordsDb = AbstractSublevel<any, any, string, WireRecord>
// biome-ignore lint/suspicious/noExplicitAny: the parent database type does not matter here
export type MetaDb = AbstractSublevel<any, any, string, unknown>

export interface StoreInit {
  records: RecordsDb
  meta: MetaDb
  privateKey: PrivateKey
  logger: Logger
  now?: () => number
  /** Machine writes reach the disk within this delay, in one batch (SD cards). */
  flushDelayMs?: number
  tombstoneHorizonMs?: number
  gcIntervalMs?: number
}

export interface StoreChange {
  key: string
  record: SignedRecord
  origin: 'local' | 'remote'
  /** When this node applied it (ms since the epoch). */
  at: number
}

export type ApplyResult = 'applied' | 'stale' | DropReason

/** Reasons a record or message is dropped, counted and shown by `km1s status`. */
export type DropCounter = DropReason | 'garbage'

export interface StoreStats {
  records: number
  tombstones: number
  applied: number
  stale: number
  dropped: Record<DropCounter, number>
  pendingWrites: number
  flushes: number
}

const DROP_COUNTERS: DropCounter[] = [
  'bad-signature',
  'forged-owner',
  'invalid-value',
  'oversized',
  'unknown-key',
  'clock-drift',
  'malformed',
  'garbage',
]

export class Store {
  readonly selfId: string
  readonly #init: StoreInit
  readonly #log: Logger
  readonly #now: () => number
  readonly #map = new Map<string, SignedRecord>()
  readonly #pending = new Map<string, SignedRecord | null>()
  readonly #events = new EventEmitter()
  readonly #warnOnce = createLogThrottle(60_000)
  readonly #dropped = Object.fromEntries(DROP_COUNTERS.map((r) => [r, 0])) as Record<DropCounter, number>
  #hlc: Hlc = ZERO_HLC
  #digest: Digest | undefined
  #fingerprint: string | undefined
  /** When the map last changed (ms): a store still changing gives no fingerprint. */
  #changedAt = 0
  #flushTimer: NodeJS.Timeout | undefined
  #gcTimer: NodeJS.Timeout | undefined
  #flushing: Promise<void> = Promise.resolve()
  #applied = 0
  #stale = 0
  #flushes = 0
  #stopped = false

  constructor(init: StoreInit) {
    this.#init = init
    this.#log = init.logger.child({ subsystem: 'state' })
    this.#now = init.now ?? Date.now
    this.selfId = peerIdFromPrivateKey(init.privateKey).toString()
    this.#events.setMaxListeners(0)
  }

  /** Reads every record from disk; refuses a database of another schema version. */
  async load(): Promise<void> {
    const version = await this.#init.meta.get('schema')
    if (version === undefined) await this.#init.meta.put('schema', SCHEMA_VERSION)
    else if (version !== SCHEMA_VERSION) {
      throw new Km1sError(
        'ERR_SCHEMA',
        `The state database was written with schema ${String(version)}, this km1s reads ${SCHEMA_VERSION}; run the matching km1s version or move the data directory away.`,
      )
    }
    let skipped = 0
    for await (const [key, wire] of this.#init.records.iterator()) {
      // Records were checked when they entered; here only the shape, so 10,000 load in well under a second.
      const decoded = fromWire(wire)
      if (!decoded.ok || decoded.record.key !== key) {
        skipped++
        continue
      }
      this.#map.set(key, decoded.record)
      if (compareHlc(decoded.record.hlc, this.#hlc) > 0) this.#hlc = decoded.record.hlc
    }
    if (skipped > 0) this.#log.warn({ skipped }, 'skipped unreadable records in the state database')
    this.#gcTimer = setInterval(() => this.collectGarbage(), this.#init.gcIntervalMs ?? 3_600_000)
    this.#gcTimer.unref()
  }

  /** Writes everything pending to disk and stops the timers. */
  async stop(): Promise<void> {
    if (this.#stopped) return
    this.#stopped = true
    clearInterval(this.#gcTimer)
    await this.flush()
  }

  get(key: string): SignedRecord | undefined {
    const r = this.#map.get(key)
    return r && !r.deleted ? r : undefined
  }

  /** Live records whose key starts with `prefix`, in key order. */
  list(prefix: string): SignedRecord[] {
    const out: SignedRecord[] = []
    for (const [key, r] of this.#map) if (!r.deleted && key.startsWith(prefix)) out.push(r)
    return out.sort((a, b) => (a.key < b.key ? -1 : 1))
  }

  /** Every record, tombstones included: what anti-entropy compares. */
  all(): ReadonlyMap<string, SignedRecord> {
    return this.#map
  }

  digest(): Digest {
    this.#digest ??= computeDigest(this.#map)
    return this.#digest
  }

  /**
   * The digest's fingerprint for heartbeats, or undefined while the store is still changing (within
   * `quietMs` of its last change): a stream of writes must not recompute the digest every second (~8 ms
   * for 1,000 records without the optimizing compilers). Peers then run the periodic session as before.
   */
  fingerprint(quietMs = DIGEST_QUIET_MS): string | undefined {
    if (this.#now() - this.#changedAt < quietMs) return undefined
    this.#fingerprint ??= digestFingerprint(this.digest())
    return this.#fingerprint
  }

  /** A local write. With `durable` it is on disk before the promise resolves (user writes). */
  async put(key: string, value: JsonValue, opts: { durable?: boolean } = {}): Promise<SignedRecord> {
    return this.#write(key, value, false, opts.durable ?? false)
  }

  async delete(key: string, opts: { durable?: boolean } = {}): Promise<SignedRecord> {
    return this.#write(key, null, true, opts.durable ?? false)
  }

  async #write(key: string, value: JsonValue, deleted: boolean, durable: boolean): Promise<SignedRecord> {
    const now = this.#now()
    this.#hlc = tick(this.#hlc, now)
    const record = await signRecord(this.#init.privateKey, { key, value, hlc: this.#hlc, deleted })
    const verdict = checkRecord(record, now)
    if (!verdict.ok) {
      throw new Km1sError(
        'ERR_INVALID',
        `The record ${key} was refused: ${verdict.reason.replace('-', ' ')}.`,
      )
    }
    if (durable) {
      // A user write: on disk (fsync'd, it must survive a power cut) before it is applied, gossiped or
      // acknowledged, so an error means the write did not happen. Queued behind flushes of older versions.
      await this.#enqueue(async () => {
        try {
          await this.#init.records.put(key, toWire(record), SYNC_WRITE)
        } catch (err) {
          throw diskError(err)
        }
      })
      // A newer record of this key may have arrived while the disk was busy: it stays.
      if (supersedes(record, this.#map.get(key))) this.#set(record, 'local', false)
    } else this.#set(record, 'local', true)
    return record
  }

  /** The gate for records from other nodes: validated, merged if newer, dropped and counted if bad. */
  async applyRemote(record: SignedRecord, from: string): Promise<ApplyResult> {
    const now = this.#now()
    const current = this.#map.get(record.key)
    // Cheap first: a record we already hold (gossip duplicates, sync overlaps) needs no signature check.
    // A tombstone past the horizon is stale too, or nodes that collected it would keep getting it back.
    const expired =
      record.deleted && record.hlc.wall < now - (this.#init.tombstoneHorizonMs ?? TOMBSTONE_HORIZON_MS)
    if (expired || !supersedes(record, current)) {
      this.#stale++
      return 'stale'
    }
    const verdict = await validateIncoming(record, now)
    if (!verdict.ok) {
      this.drop(verdict.reason, from)
      return verdict.reason
    }
    const clock = receive(this.#hlc, record.hlc, now)
    if (!clock.ok) {
      this.drop('clock-drift', from)
      return 'clock-drift'
    }
    this.#hlc = clock.hlc
    // Another record may have landed while the signature was checked.
    if (!supersedes(record, this.#map.get(record.key))) {
      this.#stale++
      return 'stale'
    }
    this.#set(record, 'remote', true)
    this.#applied++
    return 'applied'
  }

  /** Counts a dropped record or message, and logs it at most once per peer per minute. */
  drop(reason: DropCounter, from: string): void {
    this.#dropped[reason]++
    if (this.#warnOnce(`${from}`)) {
      this.#log.warn(
        { peer: from, reason },
        `dropped a record from ${from}: ${reason} (logged once a minute per peer)`,
      )
    }
  }

  /** Changes under `prefix` from now on, until `signal` aborts. */
  async *watch(prefix: string, signal: AbortSignal): AsyncGenerator<StoreChange> {
    try {
      for await (const [change] of on(this.#events, 'change', { signal }) as AsyncIterable<[StoreChange]>) {
        if (change.key.startsWith(prefix)) yield change
      }
    } catch (err) {
      if (!signal.aborted) throw err
    }
  }

  /** Calls `fn` for every change (local and remote), synchronously; returns the unsubscribe function. */
  onChange(fn: (change: StoreChange) => void): () => void {
    this.#events.on('change', fn)
    return () => this.#events.off('change', fn)
  }

  stats(): StoreStats {
    let tombstones = 0
    for (const r of this.#map.values()) if (r.deleted) tombstones++
    return {
      records: this.#map.size - tombstones,
      tombstones,
      applied: this.#applied,
      stale: this.#stale,
      dropped: { ...this.#dropped },
      pendingWrites: this.#pending.size,
      flushes: this.#flushes,
    }
  }

  /** Forgets tombstones older than the horizon, in memory and on disk. */
  collectGarbage(): number {
    const kept = collectTombstones(
      this.#map,
      this.#now(),
      this.#init.tombstoneHorizonMs ?? TOMBSTONE_HORIZON_MS,
    )
    let removed = 0
    for (const key of [...this.#map.keys()]) {
      if (kept.has(key)) continue
      this.#map.delete(key)
      this.#pending.set(key, null)
      removed++
    }
    if (removed > 0) {
      this.#changed()
      this.#scheduleFlush()
    }
    return removed
  }

  #changed(): void {
    this.#digest = undefined
    this.#fingerprint = undefined
    this.#changedAt = this.#now()
  }

  #set(record: SignedRecord, origin: StoreChange['origin'], persist = true): void {
    this.#map.set(record.key, record)
    this.#changed()
    if (persist) {
      this.#pending.set(record.key, record)
      this.#scheduleFlush()
    } else this.#pending.delete(record.key)
    this.#events.emit('change', { key: record.key, record, origin, at: this.#now() } satisfies StoreChange)
  }

  #scheduleFlush(): void {
    if (this.#flushTimer || this.#stopped) return
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined
      this.flush().catch((err) =>
        this.#log.error({ err: errorMessage(err) }, 'writing the state database failed'),
      )
    }, this.#init.flushDelayMs ?? 1_000)
    this.#flushTimer.unref()
  }

  /** Writes what is pending in one batch; concurrent calls queue behind each other. */
  flush(): Promise<void> {
    return this.#enqueue(() => this.#flushNow())
  }

  /** Runs disk work one job at a time, in order, whatever the previous job's outcome. */
  #enqueue(job: () => Promise<void>): Promise<void> {
    this.#flushing = this.#flushing.then(job, job)
    return this.#flushing
  }

  async #flushNow(): Promise<void> {
    if (this.#pending.size === 0) return
    clearTimeout(this.#flushTimer)
    this.#flushTimer = undefined
    const batch = [...this.#pending]
    this.#pending.clear()
    try {
      await this.#init.records.batch(
        batch.map(([key, r]) =>
          r === null ? { type: 'del' as const, key } : { type: 'put' as const, key, value: toWire(r) },
        ),
      )
      this.#flushes++
    } catch (err) {
      // Put them back (unless newer ones arrived) so the next flush retries; a full disk loses nothing.
      for (const [key, r] of batch) if (!this.#pending.has(key)) this.#pending.set(key, r)
      if (!this.#stopped) this.#scheduleFlush()
      throw diskError(err)
    }
  }
}

function diskError(cause: unknown): Km1sError {
  return new Km1sError(
    'ERR_DISK',
    `Cannot write the state database: ${errorMessage(cause)}; free some disk space.`,
    {
      cause,
    },
  )
}
