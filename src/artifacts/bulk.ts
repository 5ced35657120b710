// The fast lane for blocks: a plain TCP connection beside the libp2p one, used for the block protocol's frames
// once both sides agreed on it over their authenticated libp2p stream.
//
// Why: over libp2p every byte of a block passes pnet's cipher, noise's AEAD in 64 KiB messages, yamux framing
// and the stream layers, each in JavaScript with its own copies. With 9 agents on 2 cores a 64 MiB swarm
// spent ~18 CPU-seconds there (8× what plain HTTP needed for the same bytes); the same frames as one
// ChaCha20-Poly1305 record per block over a bare socket cost ~3 ns a byte (docs/artifacts.md).
//
// How: the puller sends BULK on its /km1s/blocks stream (noise-encrypted and bound to the provider's peer id);
// the provider answers with a port, a one-time 16-byte ticket and a fresh 32-byte secret. The puller connects
// to the provider's address on that port and sends the ticket; from then on both directions are records
// [u32 length][ChaCha20-Poly1305(frame)], keyed by HKDF(secret, ticket, direction), nonces counting up. A
// record that fails its check ends the connection. Nobody without the secret can read or forge a frame; a
// stolen ticket only spoils that one lane, and the puller falls back to its libp2p stream, as it does when
// the port cannot be reached (a firewall) or the provider is a km1s without the fast lane.
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto'
import net from 'node:net'
import type { Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import { Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'

/** The block protocol's frames, over a libp2p stream or a fast lane. */
export interface FrameChannel {
  /** 'bulk' seals a frame before write() returns, so the caller may reuse the frame's buffer at once. */
  readonly kind: 'libp2p' | 'bulk'
  read(signal: AbortSignal): Promise<Uint8Array>
  write(frame: Uint8Array, signal: AbortSignal): Promise<void>
  /** Ends the channel; a pending read rejects. */
  abort(err: Error): void
}

/** Length-prefixed frames on a libp2p stream (the protocol as it always was). */
export function lpChannel(stream: Stream, maxDataLength: number, maxBufferSize?: number): FrameChannel {
  const lp = lpStream(stream, { maxDataLength, ...(maxBufferSize ? { maxBufferSize } : {}) })
  return {
    kind: 'libp2p',
    read: async (signal) => (await lp.read({ signal })).subarray(),
    write: (frame, signal) => lp.write(frame, { signal }),
    abort: (err) => stream.abort(err),
  }
}

const TICKET_BYTES = 16
const SECRET_BYTES = 32
export const OFFER_BYTES = 2 + TICKET_BYTES + SECRET_BYTES
const TAG_BYTES = 16
const HEADER_BYTES = 4

export interface Offer {
  port: number
  ticket: Uint8Array
  secret: Uint8Array
}

export function encodeOffer(o: Offer): Uint8Array {
  const out = new Uint8Array(OFFER_BYTES)
  new DataView(out.buffer).setUint16(0, o.port)
  out.set(o.ticket, 2)
  out.set(o.secret, 2 + TICKET_BYTES)
  return out
}

export function decodeOffer(bytes: Uint8Array): Offer | undefined {
  if (bytes.length !== OFFER_BYTES) return undefined
  const port = new DataView(bytes.buffer, bytes.byteOffset, 2).getUint16(0)
  if (port === 0) return undefined
  return {
    port,
    ticket: bytes.slice(2, 2 + TICKET_BYTES),
    secret: bytes.slice(2 + TICKET_BYTES),
  }
}

type Direction = 'puller' | 'provider'

function laneKey(o: Offer, from: Direction): Buffer {
  return Buffer.from(hkdfSync('sha256', o.secret, o.ticket, `km1s bulk/1 from ${from}`, 32))
}

function nonce(n: number): Buffer {
  const iv = Buffer.alloc(12)
  iv.writeUIntLE(n, 0, 6)
  return iv
}

/** Seals frames into records, in order (the nonce counts frames). */
export function sealer(key: Uint8Array): (frame: Uint8Array) => Buffer[] {
  let n = 0
  return (frame) => {
    const c = createCipheriv('chacha20-poly1305', key, nonce(n++), { authTagLength: TAG_BYTES })
    const body = c.update(frame)
    c.final()
    const header = Buffer.allocUnsafe(HEADER_BYTES)
    header.writeUInt32BE(body.length + TAG_BYTES)
    return [header, body, c.getAuthTag()]
  }
}

/** Opens records in order; undefined for one that fails its check (then the lane is spoiled). */
export function opener(key: Uint8Array): (record: Uint8Array) => Buffer | undefined {
  let n = 0
  return (record) => {
    if (record.length < TAG_BYTES) return undefined
    const d = createDecipheriv('chacha20-poly1305', key, nonce(n++), { authTagLength: TAG_BYTES })
    d.setAuthTag(record.subarray(record.length - TAG_BYTES))
    const out = d.update(record.subarray(0, record.length - TAG_BYTES))
    try {
      d.final()
    } catch {
      return undefined
    }
    return out
  }
}

/**
 * Cuts a byte stream into records of at most `maxRecord` bytes, each handed to `onRecord` before the next is
 * read into the same buffer (one buffer per lane, not one per block); throws on a longer one (garbage).
 */
export class RecordReader {
  readonly #max: number
  readonly #header = Buffer.alloc(HEADER_BYTES)
  #headerHave = 0
  #buffer: Buffer = Buffer.alloc(0)
  #record: Buffer | undefined
  #have = 0

  constructor(maxRecord: number) {
    this.#max = maxRecord
  }

  push(chunk: Uint8Array, onRecord: (record: Buffer) => boolean): void {
    let off = 0
    while (off < chunk.length) {
      if (!this.#record) {
        const take = Math.min(HEADER_BYTES - this.#headerHave, chunk.length - off)
        this.#header.set(chunk.subarray(off, off + take), this.#headerHave)
        this.#headerHave += take
        off += take
        if (this.#headerHave < HEADER_BYTES) break
        const len = this.#header.readUInt32BE(0)
        if (len > this.#max || len < TAG_BYTES)
          throw new Km1sError('ERR_BLOCKS_PROTOCOL', `a fast-lane record of ${len} bytes`)
        if (this.#buffer.length < len) this.#buffer = Buffer.allocUnsafe(len)
        this.#record = this.#buffer.subarray(0, len)
        this.#have = 0
        this.#headerHave = 0
        continue
      }
      const take = Math.min(this.#record.length - this.#have, chunk.length - off)
      this.#record.set(chunk.subarray(off, off + take), this.#have)
      this.#have += take
      off += take
      if (this.#have === this.#record.length) {
        const record = this.#record
        this.#record = undefined
        if (!onRecord(record)) return
      }
    }
  }
}

const LANE_IDLE_MS = 60_000

/** Frames waiting to be read before the socket is paused: the puller's window bounds them anyway. */
const READ_AHEAD = 4

class SocketChannel implements FrameChannel {
  readonly kind = 'bulk'
  readonly #socket: net.Socket
  readonly #seal: (frame: Uint8Array) => Buffer[]
  readonly #open: (record: Uint8Array) => Buffer | undefined
  readonly #records: RecordReader
  readonly #frames: Buffer[] = []
  #waiter: { resolve: (f: Buffer) => void; reject: (e: Error) => void } | undefined
  #error: Error | undefined

  /**
   * `early`: bytes that arrived with the ticket. `fed`: the socket reads into a buffer of its own (`onread`)
   * and its callback calls feed(); otherwise the channel listens for 'data'.
   */
  constructor(
    socket: net.Socket,
    offer: Offer,
    me: Direction,
    maxRead: number,
    opts: { early?: Uint8Array; fed?: boolean } = {},
  ) {
    this.#socket = socket
    this.#seal = sealer(laneKey(offer, me))
    this.#open = opener(laneKey(offer, me === 'puller' ? 'provider' : 'puller'))
    this.#records = new RecordReader(maxRead + TAG_BYTES)
    socket.setNoDelay(true)
    // A puller asks HAVE every 250 ms while it pulls: a provider's lane idle for a minute belongs to a puller
    // that is gone without a word (power cut), and is closed. The puller has its own request timeouts.
    socket.setTimeout(me === 'provider' ? LANE_IDLE_MS : 0)
    if (me === 'provider')
      socket.on('timeout', () => this.abort(new Km1sError('ERR_BLOCKS_PROTOCOL', 'the fast lane went quiet')))
    if (!opts.fed) socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    socket.on('error', (err) => this.#end(err))
    socket.on('close', () => this.#end(new Km1sError('ERR_BLOCKS_PROTOCOL', 'the fast lane closed')))
    if (opts.early && opts.early.length > 0) this.#onData(opts.early)
  }

  /** Bytes read into the socket's own buffer (copied out before this returns); false pauses the socket. */
  feed(chunk: Uint8Array): boolean {
    this.#onData(chunk)
    return this.#frames.length < READ_AHEAD
  }

  #onData(chunk: Uint8Array): void {
    if (this.#error) return
    try {
      this.#records.push(chunk, (r) => {
        const frame = this.#open(r)
        if (!frame) {
          this.abort(new Km1sError('ERR_BLOCKS_PROTOCOL', 'a fast-lane record failed its check'))
          return false
        }
        if (this.#waiter) {
          const w = this.#waiter
          this.#waiter = undefined
          w.resolve(frame)
        } else this.#frames.push(frame)
        return true
      })
    } catch (err) {
      this.abort(err as Error)
      return
    }
    if (this.#frames.length >= READ_AHEAD) this.#socket.pause()
  }

  #end(err: Error): void {
    this.#error ??= err
    const w = this.#waiter
    this.#waiter = undefined
    w?.reject(this.#error)
  }

  read(signal: AbortSignal): Promise<Uint8Array> {
    const next = this.#frames.shift()
    if (next) {
      if (this.#frames.length < READ_AHEAD && this.#socket.isPaused()) this.#socket.resume()
      return Promise.resolve(next)
    }
    if (this.#error) return Promise.reject(this.#error)
    if (this.#socket.isPaused()) this.#socket.resume()
    return new Promise<Buffer>((resolve, reject) => {
      const onAbort = () => {
        this.#waiter = undefined
        reject(signal.reason as Error)
      }
      if (signal.aborted) return onAbort()
      signal.addEventListener('abort', onAbort, { once: true })
      this.#waiter = {
        resolve: (f) => {
          signal.removeEventListener('abort', onAbort)
          resolve(f)
        },
        reject: (e) => {
          signal.removeEventListener('abort', onAbort)
          reject(e)
        },
      }
    })
  }

  async write(frame: Uint8Array, signal: AbortSignal): Promise<void> {
    if (this.#error) throw this.#error
    const s = this.#socket
    s.cork()
    let ok = true
    for (const part of this.#seal(frame)) ok = s.write(part)
    s.uncork()
    if (ok) return
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        s.off('drain', onDrain)
        s.off('close', onClose)
        signal.removeEventListener('abort', onAbort)
        if (err) reject(err)
        else resolve()
      }
      const onDrain = () => done()
      const onClose = () => done(this.#error ?? new Km1sError('ERR_BLOCKS_PROTOCOL', 'the fast lane closed'))
      const onAbort = () => done(signal.reason as Error)
      s.on('drain', onDrain)
      s.on('close', onClose)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  abort(err: Error): void {
    this.#end(err)
    this.#socket.destroy()
  }
}

export interface BulkServerStats {
  /** Fast lanes opened to this node (it served blocks on them). */
  lanes: number
  /** Connections refused: no valid ticket in time, or too many waiting. */
  refused: number
}

interface Ticket {
  offer: Offer
  maxRead: number
  onLane: (ch: FrameChannel) => void
  timer: NodeJS.Timeout
}

/** The provider's side: one listening socket, lanes handed out by ticket. */
export class BulkServer {
  readonly #log: Logger
  readonly #tickets = new Map<string, Ticket>()
  readonly #sockets = new Set<net.Socket>()
  readonly #ticketTtlMs: number
  readonly #maxWaiting: number
  #server: net.Server | undefined
  #port = 0
  #waiting = 0
  #stats: BulkServerStats = { lanes: 0, refused: 0 }

  constructor(opts: { logger: Logger; ticketTtlMs?: number; maxWaiting?: number }) {
    this.#log = opts.logger
    this.#ticketTtlMs = opts.ticketTtlMs ?? 5_000
    this.#maxWaiting = opts.maxWaiting ?? 32
  }

  get port(): number {
    return this.#port
  }

  stats(): BulkServerStats {
    return { ...this.#stats }
  }

  /** Listens on an ephemeral port on every address; resolves false if it cannot (no fast lane then). */
  async start(): Promise<boolean> {
    const server = net.createServer((s) => this.#accept(s))
    server.on('error', (err) => this.#log.warn({ err: err.message }, 'the fast lane for blocks failed'))
    const ok = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false))
      server.listen({ port: 0 }, () => resolve(true))
    })
    if (!ok) return false
    this.#server = server
    this.#port = (server.address() as net.AddressInfo).port
    return true
  }

  async stop(): Promise<void> {
    for (const t of this.#tickets.values()) clearTimeout(t.timer)
    this.#tickets.clear()
    for (const s of this.#sockets) s.destroy()
    const server = this.#server
    this.#server = undefined
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  /** A one-time offer for the peer at the other end of an authenticated stream; undefined when not listening. */
  offer(maxRead: number, onLane: (ch: FrameChannel) => void): Uint8Array | undefined {
    if (!this.#server || this.#tickets.size >= 1_000) return undefined
    const offer: Offer = {
      port: this.#port,
      ticket: randomBytes(TICKET_BYTES),
      secret: randomBytes(SECRET_BYTES),
    }
    const key = Buffer.from(offer.ticket).toString('hex')
    const timer = setTimeout(() => this.#tickets.delete(key), this.#ticketTtlMs)
    timer.unref()
    this.#tickets.set(key, { offer, maxRead, onLane, timer })
    return encodeOffer(offer)
  }

  #accept(socket: net.Socket): void {
    if (!this.#server || this.#waiting >= this.#maxWaiting) {
      this.#stats.refused++
      socket.destroy()
      return
    }
    this.#waiting++
    this.#sockets.add(socket)
    socket.on('close', () => this.#sockets.delete(socket))
    socket.on('error', () => {})
    let got = Buffer.alloc(0)
    let settled = false
    const refuse = () => {
      if (settled) return
      settled = true
      this.#waiting--
      this.#stats.refused++
      socket.destroy()
    }
    socket.setTimeout(2_000, refuse)
    const onData = (chunk: Buffer) => {
      got = Buffer.concat([got, chunk])
      if (got.length < TICKET_BYTES) return
      socket.off('data', onData)
      const key = got.subarray(0, TICKET_BYTES).toString('hex')
      const t = this.#tickets.get(key)
      if (!t) return refuse()
      this.#tickets.delete(key)
      clearTimeout(t.timer)
      settled = true
      this.#waiting--
      this.#stats.lanes++
      t.onLane(
        new SocketChannel(socket, t.offer, 'provider', t.maxRead, { early: got.subarray(TICKET_BYTES) }),
      )
    }
    socket.on('data', onData)
    socket.once('close', refuse)
  }
}

/** The puller's side: connects to an offer made on the stream to `host`; rejects within `timeoutMs`. */
export function connectLane(
  host: string,
  offerBytes: Uint8Array,
  maxRead: number,
  signal: AbortSignal,
  timeoutMs = 1_000,
): Promise<FrameChannel> {
  const offer = decodeOffer(offerBytes)
  if (!offer) return Promise.reject(new Km1sError('ERR_BLOCKS_PROTOCOL', 'a malformed fast-lane offer'))
  return new Promise<FrameChannel>((resolve, reject) => {
    // The puller receives whole blocks: the socket reads into one buffer (no new 64 KiB buffer per read,
    // which kept the GC busy), and the lane copies each chunk into its record before the next read.
    let lane: SocketChannel | undefined
    const socket = net.connect({
      host,
      port: offer.port,
      onread: {
        buffer: Buffer.allocUnsafe(64 << 10),
        callback: (n, buf) => lane?.feed(buf.subarray(0, n)) ?? true,
      },
    })
    const fail = (err: Error) => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
      reject(err)
    }
    const onAbort = () => fail(signal.reason as Error)
    const timer = setTimeout(
      () => fail(new Km1sError('ERR_BLOCKS_PROTOCOL', `the fast lane to ${host}:${offer.port} timed out`)),
      timeoutMs,
    )
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('error', fail)
    socket.once('connect', () => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      socket.off('error', fail)
      socket.write(offer.ticket)
      lane = new SocketChannel(socket, offer, 'puller', maxRead, { fed: true })
      resolve(lane)
    })
  })
}
