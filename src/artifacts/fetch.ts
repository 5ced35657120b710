// One pull: find who holds the root, fetch the manifest, then every missing chunk from several providers at
// once, a window of requests per provider, rarest chunk first. Providers that hold the whole artifact
// (seeders, e.g. the node that pushed) are asked only for chunks no other puller holds yet, so a fleet
// pulling at once fills up from each other (a swarm) instead of from the seeder alone. Every block is
// checked against its CID; a peer that sends a wrong one is banned and its chunks go back to the queue.
import type { Stream } from '@libp2p/interface'
import { errorMessage, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import type { FileBlockstore } from './blockstore.ts'
import { connectLane, type FrameChannel, lpChannel } from './bulk.ts'
import { blockMatches, type CID } from './cid.ts'
import { decodeManifest, type Manifest, uniqueChunks } from './manifest.ts'
import {
  ANS_BLOCK,
  ANS_BULK,
  ANS_HAVE,
  ANS_NONE,
  ANS_SEED,
  bitAt,
  encodeRequest,
  MAX_ANSWER_BYTES,
  OP_BULK,
  OP_HAVE,
  OP_WANT,
} from './protocol.ts'

export interface PullProgress {
  /** Bytes of chunks held locally (already there or fetched). */
  bytes: number
  total: number
  /** Providers currently sending. */
  peers: number
  /** Blocks that failed their hash check (their senders are banned). */
  badBlocks: number
}

export interface FetchDeps {
  blocks: FileBlockstore
  /**
   * Peers that may hold `root`: connected peers and records, and with `dht` the DHT's providers too (a
   * lookup that costs every peer work, so asked for only when the others do not serve).
   */
  candidates(root: CID, signal: AbortSignal, opts: { dht: boolean }): Promise<string[]>
  /** A block stream to `peer`, and the IP address its connection reached (for a fast lane). */
  dial(peer: string, signal: AbortSignal): Promise<{ stream: Stream; host?: string | undefined }>
  /** Ask each provider for a fast lane (bulk.ts) and use it when it can be reached. */
  fastLane?: boolean
  ban(peer: string, reason: string): void
  isBanned(peer: string): boolean
  logger: Logger
  /** Requests (blocks) in flight for the whole pull, shared by its providers. */
  window?: number
  maxProviders?: number
  /** How long to look for a first provider, and for any provider while chunks are missing. */
  findTimeoutMs?: number
  requestTimeoutMs?: number
  haveIntervalMs?: number
  /** How long providers may send nothing useful before the pull fails (their chunks are kept). */
  stallTimeoutMs?: number
}

type Pending = { op: 'want'; index: number } | { op: 'want-root' } | { op: 'have' }

class Provider {
  readonly peer: string
  readonly channel: FrameChannel
  readonly pending: Pending[] = []
  have: Uint8Array | undefined
  seeder = false
  sent = 0
  closed = false
  /** Since when the oldest request still unanswered has waited. */
  waitingSince = Date.now()
  haveInFlight = false

  constructor(peer: string, channel: FrameChannel) {
    this.peer = peer
    this.channel = channel
  }

  wants(): number {
    let n = 0
    for (const p of this.pending) if (p.op !== 'have') n++
    return n
  }
}

/** How long a "not here" keeps a chunk off a provider: a seeder offers it again after a rest. */
const REFUSAL_MS = 2_000

export class PullAbort extends Error {
  override readonly name = 'PullAbort'
}

/** Fetches root and every chunk into the blockstore; returns the manifest. */
export async function fetchArtifact(
  deps: FetchDeps,
  root: CID,
  opts: { signal: AbortSignal; onProgress?: (p: PullProgress) => void; label: string },
): Promise<{ manifest: Manifest; badBlocks: number; peers: string[] }> {
  const session = new FetchSession(deps, root, opts)
  try {
    return await session.run()
  } finally {
    session.close()
  }
}

class FetchSession {
  readonly #d: FetchDeps
  readonly #root: CID
  readonly #signal: AbortSignal
  readonly #onProgress: ((p: PullProgress) => void) | undefined
  readonly #label: string
  readonly #log: Logger
  readonly #providers = new Map<string, Provider>()
  readonly #tried = new Set<string>()
  #discoveries = 0
  readonly #used = new Set<string>()
  #manifest: Manifest | undefined
  #chunks: CID[] = []
  #sizes: number[] = []
  #missing = new Set<number>()
  #inFlight = new Set<number>()
  /** Chunk index → peers that answered "not here" for it, and when (a seeder may offer it again later). */
  #refused = new Map<number, Map<string, number>>()
  #badBlocks = 0
  #bytes = 0
  #total = 0
  #lastProgressAt = Date.now()
  #start = 0
  #wake: (() => void) | undefined
  #error: Error | undefined

  constructor(
    deps: FetchDeps,
    root: CID,
    opts: { signal: AbortSignal; onProgress?: (p: PullProgress) => void; label: string },
  ) {
    this.#d = deps
    this.#root = root
    this.#signal = opts.signal
    this.#onProgress = opts.onProgress
    this.#label = opts.label
    this.#log = deps.logger
  }

  get #window(): number {
    return this.#d.window ?? 16
  }

  close(): void {
    for (const p of this.#providers.values()) this.#drop(p)
  }

  async run(): Promise<{ manifest: Manifest; badBlocks: number; peers: string[] }> {
    const findTimeout = this.#d.findTimeoutMs ?? 4_000
    const local = await this.#d.blocks.get(this.#root)
    if (local) this.#setManifest(local)
    let lastProviderAt = Date.now()
    let lastDiscovery = 0
    let lastHave = 0
    const haveEvery = this.#d.haveIntervalMs ?? 250
    while (!this.#done()) {
      this.#signal.throwIfAborted()
      if (this.#error) throw this.#error
      const now = Date.now()
      // A provider counts once it answered HAVE with a bitfield: a connected peer that lacks the root is no
      // provider, and neither is one that is itself still waiting for the root (an empty HAVE).
      if ([...this.#providers.values()].some((p) => p.have && p.have.length > 0)) lastProviderAt = now
      else if (now - lastProviderAt > findTimeout) throw this.#unavailable()
      if (now - this.#lastProgressAt > (this.#d.stallTimeoutMs ?? 20_000)) {
        this.#log.warn(this.#describe(), 'pull stalled')
        throw this.#unavailable()
      }
      // Looked for often while nothing is asked of anyone: no provider yet, or none that offers a missing
      // chunk now (a seeder resting the last ones, pullers that had nothing yet when first asked).
      const stuck = this.#providers.size === 0 || (this.#missing.size > 0 && this.#inFlight.size === 0)
      if (now - lastDiscovery > (stuck ? 300 : 2_000)) {
        lastDiscovery = now
        void this.#discover()
      }
      if (now - lastHave > haveEvery) {
        lastHave = now
        for (const p of this.#providers.values()) this.#askHave(p)
      }
      this.#timeouts(now)
      this.#schedule()
      await this.#sleep(haveEvery)
    }
    this.#progress()
    return { manifest: this.#manifest as Manifest, badBlocks: this.#badBlocks, peers: [...this.#used] }
  }

  /** The session's state, for the log when a pull fails. */
  #describe(): object {
    return {
      root: this.#root.toString(),
      missing: this.#missing.size,
      inFlight: [...this.#inFlight],
      providers: [...this.#providers.values()].map((p) => ({
        peer: p.peer.slice(-6),
        seeder: p.seeder,
        pending: p.pending.map((x) => (x.op === 'want' ? x.index : x.op)),
        holds: this.#chunks.filter((_, i) => p.have && bitAt(p.have, i)).length,
        waitingMs: Date.now() - p.waitingSince,
      })),
    }
  }

  #done(): boolean {
    return this.#manifest !== undefined && this.#missing.size === 0
  }

  #unavailable(): Km1sError {
    return this.#manifest
      ? new Km1sError(
          'ERR_ARTIFACT_UNAVAILABLE',
          `No reachable node holds the ${this.#missing.size} missing chunks of ${this.#label}; the chunks fetched so far are kept and a new pull resumes from them.`,
        )
      : new Km1sError(
          'ERR_ARTIFACT_UNAVAILABLE',
          `No reachable node holds ${this.#label} (${this.#root}); check 'km1s nodes' and that the node that pushed it is up.`,
        )
  }

  #sleep(ms: number): Promise<void> {
    const signal = this.#signal
    return new Promise<void>((resolve) => {
      const t = setTimeout(done, ms)
      function done() {
        clearTimeout(t)
        signal.removeEventListener('abort', done)
        resolve()
      }
      this.#wake = done
      signal.addEventListener('abort', done, { once: true })
    }).then(() => {
      this.#wake = undefined
    })
  }

  #poke(): void {
    this.#wake?.()
  }

  #setManifest(bytes: Uint8Array): void {
    const m = decodeManifest(bytes)
    if (!m) {
      this.#error = new Km1sError(
        'ERR_ARTIFACT_MANIFEST',
        `The root block of ${this.#label} is not a km1s manifest; check the CID.`,
      )
      return
    }
    this.#manifest = m
    this.#chunks = uniqueChunks(m)
    const sizeOf = new Map<string, number>()
    for (const e of m.entries) {
      if (e.kind !== 'file') continue
      e.chunks.forEach((c, i) => {
        sizeOf.set(c.toString(), Math.min(1 << 20, e.size - i * (1 << 20)))
      })
    }
    this.#start = Math.floor(Math.random() * this.#chunks.length)
    this.#sizes = this.#chunks.map((c) => sizeOf.get(c.toString()) ?? 0)
    this.#total = this.#sizes.reduce((a, b) => a + b, 0)
    this.#chunks.forEach((c, i) => {
      if (this.#d.blocks.has(c)) this.#bytes += this.#sizes[i] ?? 0
      else this.#missing.add(i)
    })
    this.#progress()
  }

  #progress(): void {
    this.#lastProgressAt = Date.now()
    let peers = 0
    for (const p of this.#providers.values()) if (p.wants() > 0) peers++
    this.#onProgress?.({ bytes: this.#bytes, total: this.#total, peers, badBlocks: this.#badBlocks })
  }

  async #discover(): Promise<void> {
    let peers: string[]
    // The first round asks connected peers and the records; the DHT only when that found nobody to serve
    // (in a LAN cluster every node is connected and the first round is enough: eight pulls that each asked
    // the DHT at once spent a third of the swarm's CPU in kad's handlers).
    const dht = this.#discoveries++ > 0 && (this.#providers.size === 0 || this.#inFlight.size === 0)
    try {
      peers = await this.#d.candidates(this.#root, this.#signal, { dht })
    } catch {
      return
    }
    const max = this.#d.maxProviders ?? 10
    await Promise.all(
      peers.map(async (peer) => {
        if (this.#providers.has(peer) || this.#providers.size >= max || this.#d.isBanned(peer)) return
        if (this.#tried.has(peer)) return
        this.#tried.add(peer)
        setTimeout(() => this.#tried.delete(peer), 1_000).unref()
        try {
          const signal = AbortSignal.any([this.#signal, AbortSignal.timeout(3_000)])
          const { stream, host } = await this.#d.dial(peer, signal)
          // libp2p 3 streams push data without backpressure and a reader's buffer has a cap (4 MiB by
          // default): the window of requests is what bounds it, so the cap is the window's blocks and a margin.
          let channel = lpChannel(
            stream,
            MAX_ANSWER_BYTES,
            (this.#window + 1) * (MAX_ANSWER_BYTES + 16) + (64 << 10),
          )
          if (this.#d.fastLane && host) channel = await this.#fastLane(channel, host, peer, signal)
          if (this.#signal.aborted || this.#providers.size >= max)
            return void channel.abort(new PullAbort('done'))
          const p = new Provider(peer, channel)
          this.#providers.set(peer, p)
          void this.#readLoop(p)
          this.#askHave(p)
        } catch (err) {
          this.#log.debug({ peer, err: errorMessage(err) }, 'cannot open a block stream')
        }
      }),
    )
  }

  /**
   * Asks the provider for a fast lane on its new stream and moves to it; keeps the stream when there is none
   * or the lane cannot be reached (a firewall, another address family): the stream is still in step then.
   */
  async #fastLane(
    stream: FrameChannel,
    host: string,
    peer: string,
    signal: AbortSignal,
  ): Promise<FrameChannel> {
    await stream.write(Uint8Array.of(OP_BULK), signal)
    const answer = await stream.read(signal)
    if (answer[0] !== ANS_BULK) return stream
    try {
      const lane = await connectLane(host, answer.subarray(1), MAX_ANSWER_BYTES, signal)
      stream.abort(new PullAbort('moved to a fast lane'))
      return lane
    } catch (err) {
      this.#log.debug({ peer, host, err: errorMessage(err) }, 'no fast lane; blocks come over the stream')
      return stream
    }
  }

  #send(p: Provider, op: number, cid: CID, pending: Pending): void {
    if (p.pending.length === 0) p.waitingSince = Date.now()
    p.pending.push(pending)
    p.channel.write(encodeRequest(op, cid), this.#signal).catch((err) => this.#fail(p, err))
  }

  #askHave(p: Provider): void {
    if (p.closed || p.haveInFlight) return
    p.haveInFlight = true
    this.#send(p, OP_HAVE, this.#root, { op: 'have' })
  }

  async #readLoop(p: Provider): Promise<void> {
    try {
      while (!p.closed) {
        const answer = await p.channel.read(this.#signal)
        p.waitingSince = Date.now()
        const pending = p.pending.shift()
        if (!pending) throw new Km1sError('ERR_BLOCKS_PROTOCOL', 'an answer nobody asked for')
        const status = answer[0]
        const body = answer.subarray(1)
        if (pending.op === 'have') {
          p.haveInFlight = false
          if (status === ANS_NONE) {
            this.#drop(p)
            return
          }
          if (status !== ANS_HAVE && status !== ANS_SEED)
            throw new Km1sError('ERR_BLOCKS_PROTOCOL', 'a bad HAVE answer')
          p.have = body
          p.seeder = status === ANS_SEED
          if (!this.#manifest && !p.pending.some((x) => x.op === 'want-root'))
            this.#send(p, OP_WANT, this.#root, { op: 'want-root' })
        } else if (status === ANS_NONE) {
          if (pending.op === 'want') {
            this.#inFlight.delete(pending.index)
            const refused = this.#refused.get(pending.index) ?? new Map<string, number>()
            this.#refused.set(pending.index, refused)
            refused.set(p.peer, Date.now())
          }
        } else if (status === ANS_BLOCK) {
          await this.#receive(p, pending, body)
          // A chunk is on disk now and nothing holds its bytes: the lane reads a later block into them.
          if (pending.op === 'want') p.channel.release?.(answer)
        } else throw new Km1sError('ERR_BLOCKS_PROTOCOL', `an answer of status ${status}`)
        this.#schedule()
        this.#poke()
      }
    } catch (err) {
      this.#fail(p, err)
    }
  }

  async #receive(p: Provider, pending: Pending, bytes: Uint8Array): Promise<void> {
    const cid = pending.op === 'want' ? (this.#chunks[pending.index] as CID) : this.#root
    if (!blockMatches(cid, bytes)) {
      this.#badBlocks++
      this.#d.ban(p.peer, `sent a block that does not match ${cid}`)
      if (pending.op === 'want') this.#inFlight.delete(pending.index)
      this.#drop(p)
      return
    }
    this.#used.add(p.peer)
    if (pending.op === 'want-root') {
      if (this.#manifest) return
      await this.#d.blocks.put(cid, bytes)
      this.#setManifest(bytes)
      for (const q of this.#providers.values()) this.#askHave(q)
      return
    }
    if (pending.op !== 'want') return
    if (!this.#missing.has(pending.index)) return
    // Still in flight while it is written: another provider's answer must not ask for it again meanwhile.
    try {
      await this.#d.blocks.put(cid, bytes)
    } finally {
      this.#inFlight.delete(pending.index)
    }
    this.#missing.delete(pending.index)
    this.#bytes += this.#sizes[pending.index] ?? bytes.length
    this.#progress()
  }

  #fail(p: Provider, err: unknown): void {
    if (p.closed) return
    if (err instanceof Km1sError && (err.code === 'ERR_ARTIFACT_QUOTA' || err.code === 'ERR_DISK_FULL')) {
      this.#error ??= err
      this.#poke()
    } else if (!this.#signal.aborted)
      this.#log.debug({ peer: p.peer, err: errorMessage(err) }, 'block stream failed; retrying elsewhere')
    this.#drop(p)
  }

  #drop(p: Provider): void {
    if (p.closed) return
    p.closed = true
    for (const x of p.pending) if (x.op === 'want') this.#inFlight.delete(x.index)
    p.pending.length = 0
    this.#providers.delete(p.peer)
    p.channel.abort(new PullAbort('provider dropped'))
    this.#poke()
  }

  #timeouts(now: number): void {
    const limit = this.#d.requestTimeoutMs ?? 10_000
    for (const p of this.#providers.values())
      if (p.pending.length > 0 && now - p.waitingSince > limit) this.#fail(p, new Error('no answer in time'))
  }

  /** Deals the window of requests to the providers, each the rarest chunk it holds. */
  #schedule(): void {
    if (!this.#manifest || this.#missing.size === 0) return
    const providers = [...this.#providers.values()].filter((p) => !p.closed && p.have)
    if (providers.length === 0) return
    const holders = new Map<number, number>()
    const heldByPuller = new Set<number>()
    for (const i of this.#missing) {
      let n = 0
      for (const p of providers)
        if (bitAt(p.have as Uint8Array, i) && !this.#isRefused(i, p.peer)) {
          n++
          if (!p.seeder) heldByPuller.add(i)
        }
      holders.set(i, n)
    }
    // Pullers first, so a chunk another puller holds is taken from it, not from a seeder.
    providers.sort((a, b) => Number(a.seeder) - Number(b.seeder))
    // One budget of requests in flight for the whole pull (memory: a block each), dealt one request per
    // provider per round: a lone provider gets the whole window, eight get two each.
    let budget = this.#window
    for (const p of this.#providers.values()) budget -= p.wants()
    let dealt = true
    while (budget > 0 && dealt) {
      dealt = false
      for (const p of providers) {
        if (budget <= 0) break
        // A seeder gets few at a time while pullers hold chunks: their next HAVE answers catch up and the
        // next picks go to them, which keeps the seeder's upload near one copy.
        const cap = p.seeder && heldByPuller.size > 0 ? 2 : this.#window
        if (p.wants() >= cap) continue
        const pick = this.#pick(p, holders, heldByPuller)
        if (pick === undefined) continue
        this.#inFlight.add(pick)
        this.#send(p, OP_WANT, this.#chunks[pick] as CID, { op: 'want', index: pick })
        budget--
        dealt = true
      }
    }
  }

  #pick(p: Provider, holders: Map<number, number>, heldByPuller: Set<number>): number | undefined {
    let best: number | undefined
    let bestRank = Number.POSITIVE_INFINITY
    let bestTie = 0
    for (const i of this.#missing) {
      if (this.#inFlight.has(i)) continue
      if (!bitAt(p.have as Uint8Array, i) || this.#isRefused(i, p.peer)) continue
      // A seeder serves only what no puller offers: a puller that holds it will answer, or be dropped.
      if (p.seeder && heldByPuller.has(i)) continue
      const rank = holders.get(i) ?? 0
      // Among the rarest, the next after this session's random start: pullers that start together ask a
      // seeder for different runs of chunks instead of colliding at random.
      const tie = (i - this.#start + this.#chunks.length) % this.#chunks.length
      if (rank < bestRank || (rank === bestRank && tie < bestTie)) {
        best = i
        bestRank = rank
        bestTie = tie
      }
    }
    return best
  }

  #isRefused(index: number, peer: string): boolean {
    const at = this.#refused.get(index)?.get(peer)
    return at !== undefined && Date.now() - at < REFUSAL_MS
  }
}
