// The fast lane for blocks: a TLS connection beside the libp2p one, keyed by a one-time pre-shared key, used
// for the block protocol's frames once both sides agreed on it over their authenticated libp2p stream.
//
// Why: over libp2p every byte of a block passes pnet's cipher, noise's AEAD in 64 KiB messages, yamux framing
// and the stream layers, each in JavaScript with its own copies. With 9 agents on 2 cores a 64 MiB swarm
// spent ~18 CPU-seconds there (8× what plain HTTP needed for the same bytes).
//
// Why TLS and not our own records: Node's ciphers hand back a new buffer for every call, and a new 1 MiB
// buffer per block on each side made V8 run a full garbage collection every ~16 MiB moved (a third of the
// swarm's CPU went to marking the heap). Node's TLS encrypts a write inside OpenSSL without a JavaScript
// buffer, and a client decrypts into one buffer of its own (`onread`), so a block costs no allocation at all
// (docs/artifacts.md). TLS 1.2 with a pre-shared key (RFC 4279) needs no certificates.
//
// How: the puller sends BULK on its /km1s/blocks stream (noise-encrypted and bound to the provider's peer id);
// the provider answers with a port, a one-time 16-byte ticket and a fresh 32-byte secret. The puller opens
// TLS to the provider's address on that port with the ticket as its PSK identity and the secret as the key:
// the handshake succeeds only with both, once. From then on both directions carry frames [u32 length][frame].
// AES-128-GCM where both ends' CPUs have AES instructions, ChaCha20-Poly1305 where either has not (a
// Raspberry Pi before the 5). A record that fails its check ends the connection; a stolen ticket only spoils that one
// lane, and the puller falls back to its libp2p stream, as it does when the port cannot be reached (a
// firewall) or the provider is a km1s without the fast lane.

import { constants, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import type net from 'node:net'
import type * as TLS from 'node:tls'
import type { Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import { Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'

// node:tls through require, not `import`: an ESM import of a builtin reads every export for its facade, and
// node:tls's `rootCertificates` getter then parses Node's bundled CA certificates (1.5 MiB of heap in every
// agent; a PSK lane needs none). See common/http.ts. And only when a lane is offered or opened: loading
// node:tls and making the provider's listener cost ~3.5 MiB of RSS and ~10 ms of CPU, which an agent that
// never serves or pulls a block (most of them, most of the time) would pay at every start
// (docs/benchmarks.md).
let tlsModule: typeof TLS | undefined
const tls = (): typeof TLS => {
  tlsModule ??= createRequire(import.meta.url)('node:tls') as typeof TLS
  return tlsModule
}

/** The block protocol's frames, over a libp2p stream or a fast lane. */
export interface FrameChannel {
  /** 'bulk' is done with a frame's buffer when write() resolves, so the caller may then reuse it. */
  readonly kind: 'libp2p' | 'bulk'
  read(signal: AbortSignal): Promise<Uint8Array>
  write(frame: Uint8Array, signal: AbortSignal): Promise<void>
  /** Hands a frame from read() back once nothing holds it any more: its buffer carries a later frame. */
  release?(frame: Uint8Array): void
  /** Ends the channel; a pending read rejects. */
  abort(err: Error): void
  /** A lane's TLS cipher suite. */
  readonly cipher?: string
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

/** The PSK identity a ticket goes by in the handshake (and the key the provider keeps it under). */
function pskIdentity(ticket: Uint8Array): string {
  return Buffer.from(ticket).toString('hex')
}

/** True when this CPU has AES instructions (x86 `aes`, Arm `aes` feature); unknown counts as not. */
export function cpuHasAes(cpuinfo: string): boolean {
  return /^(flags|Features)\s*:.*\baes\b/m.test(cpuinfo)
}

/** The lane's cipher suites in this node's order: AES-GCM first only where the CPU has AES instructions. */
export function laneCiphers(hasAes: boolean): string {
  const aes = 'PSK-AES128-GCM-SHA256'
  const chacha = 'PSK-CHACHA20-POLY1305'
  return hasAes ? `${aes}:${chacha}` : `${chacha}:${aes}`
}

let ciphers: string | undefined
function localCiphers(): string {
  if (ciphers === undefined) {
    let info = ''
    try {
      info = readFileSync('/proc/cpuinfo', 'utf8')
    } catch {
      // not Linux, or no /proc: ChaCha20 first is fast everywhere
    }
    ciphers = laneCiphers(cpuHasAes(info))
  }
  return ciphers
}

/**
 * Both ends. `ca: []`: no certificate is ever sent or checked in a PSK handshake, and without it Node loads
 * its ~140 bundled root certificates into the context (~8 ms of the first lane's CPU here).
 */
const TLS_BASE: Pick<TLS.TlsOptions, 'minVersion' | 'maxVersion' | 'ca'> = {
  minVersion: 'TLSv1.2',
  maxVersion: 'TLSv1.2',
  ca: [],
}

/** Frames up to this size are read into a buffer of their own; larger ones (blocks) into a lane's pool. */
const POOLED_FROM = 64 << 10

/**
 * Cuts a byte stream into frames of at most `maxFrame` bytes and hands each to `onFrame`; throws on a longer or
 * empty one (garbage). A large frame is read into a buffer from a small pool that release() refills, so a
 * lane that moves blocks allocates nothing per block.
 */
export class FrameReader {
  readonly #max: number
  readonly #poolSize: number
  readonly #header = Buffer.alloc(HEADER_BYTES)
  readonly #pool: Buffer[] = []
  readonly #pooled = new WeakSet<ArrayBufferLike>()
  #headerHave = 0
  #frame: Buffer | undefined
  #have = 0

  constructor(maxFrame: number, poolSize = 6) {
    this.#max = maxFrame
    this.#poolSize = poolSize
  }

  push(chunk: Uint8Array, onFrame: (frame: Buffer) => void): void {
    let off = 0
    while (off < chunk.length) {
      if (!this.#frame) {
        const take = Math.min(HEADER_BYTES - this.#headerHave, chunk.length - off)
        this.#header.set(chunk.subarray(off, off + take), this.#headerHave)
        this.#headerHave += take
        off += take
        if (this.#headerHave < HEADER_BYTES) break
        const len = this.#header.readUInt32BE(0)
        if (len > this.#max || len === 0)
          throw new Km1sError('ERR_BLOCKS_PROTOCOL', `a fast-lane frame of ${len} bytes`)
        this.#frame = this.#take(len)
        this.#have = 0
        this.#headerHave = 0
        continue
      }
      const take = Math.min(this.#frame.length - this.#have, chunk.length - off)
      this.#frame.set(chunk.subarray(off, off + take), this.#have)
      this.#have += take
      off += take
      if (this.#have === this.#frame.length) {
        const frame = this.#frame
        this.#frame = undefined
        onFrame(frame)
      }
    }
  }

  #take(len: number): Buffer {
    if (len < POOLED_FROM) return Buffer.allocUnsafe(len)
    const buf = this.#pool.pop() ?? this.#fresh()
    return buf.subarray(0, len)
  }

  #fresh(): Buffer {
    const buf = Buffer.allocUnsafeSlow(this.#max)
    this.#pooled.add(buf.buffer)
    return buf
  }

  /** A frame this reader made, given back: its buffer serves a later frame. Others are ignored. */
  release(frame: Uint8Array): void {
    if (!this.#pooled.has(frame.buffer) || this.#pool.length >= this.#poolSize) return
    this.#pool.push(Buffer.from(frame.buffer, 0, this.#max))
  }
}

const LANE_IDLE_MS = 60_000

/** Frames waiting to be read before the socket is paused: the puller's window bounds them anyway. */
const READ_AHEAD = 4

class SocketChannel implements FrameChannel {
  readonly kind = 'bulk'
  readonly cipher: string
  readonly #socket: TLS.TLSSocket
  readonly #frames: Buffer[] = []
  readonly #reader: FrameReader
  #waiter: { resolve: (f: Buffer) => void; reject: (e: Error) => void } | undefined
  #error: Error | undefined

  /** `fed`: the socket reads into a buffer of its own (`onread`) whose callback calls feed(). */
  constructor(
    socket: TLS.TLSSocket,
    role: 'puller' | 'provider',
    maxRead: number,
    opts: { fed?: boolean } = {},
  ) {
    this.#socket = socket
    this.cipher = socket.getCipher()?.name ?? 'unknown'
    this.#reader = new FrameReader(maxRead, READ_AHEAD + 2)
    socket.setNoDelay(true)
    // A puller asks HAVE every 250 ms while it pulls: a provider's lane idle for a minute belongs to a puller
    // that is gone without a word (power cut), and is closed. The puller has its own request timeouts.
    socket.setTimeout(role === 'provider' ? LANE_IDLE_MS : 0)
    if (role === 'provider')
      socket.on('timeout', () => this.abort(new Km1sError('ERR_BLOCKS_PROTOCOL', 'the fast lane went quiet')))
    if (!opts.fed) socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    // A TLS record that fails its check errors the socket but leaves it open: the lane is over, so it goes.
    socket.on('error', (err) => this.abort(err))
    socket.on('close', () => this.#end(new Km1sError('ERR_BLOCKS_PROTOCOL', 'the fast lane closed')))
  }

  /** Bytes read into the socket's own buffer (copied out before this returns); false pauses the socket. */
  feed(chunk: Uint8Array): boolean {
    this.#onData(chunk)
    return this.#frames.length < READ_AHEAD
  }

  #onData(chunk: Uint8Array): void {
    if (this.#error) return
    try {
      this.#reader.push(chunk, (frame) => {
        if (this.#waiter) {
          const w = this.#waiter
          this.#waiter = undefined
          w.resolve(frame)
        } else this.#frames.push(frame)
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

  release(frame: Uint8Array): void {
    this.#reader.release(frame)
  }

  /** Resolves once TLS has taken the frame (encrypted, handed to the kernel): its buffer is free again. */
  async write(frame: Uint8Array, signal: AbortSignal): Promise<void> {
    if (this.#error) throw this.#error
    const s = this.#socket
    const header = Buffer.allocUnsafe(HEADER_BYTES)
    header.writeUInt32BE(frame.length)
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal.reason as Error)
      signal.addEventListener('abort', onAbort, { once: true })
      const done = (err?: Error | null) => {
        signal.removeEventListener('abort', onAbort)
        if (err) reject(this.#error ?? err)
        else resolve()
      }
      if (frame.length < POOLED_FROM) {
        s.write(Buffer.concat([header, frame]), done)
        return
      }
      // Two writes, not a corked pair: TLS would copy a pair into one new buffer before encrypting it.
      s.write(header)
      s.write(frame, done)
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
  /** Connections refused: no valid ticket (wrong, spent, expired, none within the handshake time), or too many. */
  refused: number
}

interface Ticket {
  secret: Buffer
  maxRead: number
  onLane: (ch: FrameChannel) => void
  timer: NodeJS.Timeout
}

/** After a listener could not start, offers are refused this long before it is tried again. */
const LISTEN_RETRY_MS = 60_000

/**
 * The provider's side: one TLS listener, lanes handed out by ticket (the PSK identity). The listener starts
 * at the first offer (`start`), not with the agent.
 */
export class BulkServer {
  readonly #log: Logger
  readonly #tickets = new Map<string, Ticket>()
  readonly #claimed = new WeakMap<TLS.TLSSocket, Ticket>()
  readonly #sockets = new Set<net.Socket>()
  readonly #ticketTtlMs: number
  readonly #maxConnections: number
  readonly #handshakeMs: number
  #server: TLS.Server | undefined
  #starting: Promise<boolean> | undefined
  #retryAt = 0
  #stopped = false
  #port = 0
  #stats: BulkServerStats = { lanes: 0, refused: 0 }

  readonly #ciphers: string

  /** `ciphers`: this node's cipher order (tests); by default from its CPU. */
  constructor(opts: {
    logger: Logger
    ticketTtlMs?: number
    maxConnections?: number
    handshakeMs?: number
    ciphers?: string
  }) {
    this.#log = opts.logger
    this.#ciphers = opts.ciphers ?? localCiphers()
    this.#ticketTtlMs = opts.ticketTtlMs ?? 5_000
    this.#maxConnections = opts.maxConnections ?? 64
    this.#handshakeMs = opts.handshakeMs ?? 2_000
  }

  get port(): number {
    return this.#port
  }

  stats(): BulkServerStats {
    return { ...this.#stats }
  }

  /**
   * Listens on an ephemeral port on every address, once; resolves false if it cannot (no fast lane then, and
   * no new try for LISTEN_RETRY_MS) or after stop(). Concurrent calls share one attempt.
   */
  async start(): Promise<boolean> {
    if (this.#server) return true
    if (this.#stopped || Date.now() < this.#retryAt) return false
    this.#starting ??= this.#listen().finally(() => {
      this.#starting = undefined
    })
    return this.#starting
  }

  async #listen(): Promise<boolean> {
    const server = tls().createServer(
      {
        ...TLS_BASE,
        ciphers: this.#ciphers,
        honorCipherOrder: true,
        // ChaCha20 whenever the puller lists it first (a Pi without AES instructions), AES-GCM only when both
        // ends have them: OpenSSL's "prioritize ChaCha" on top of the provider's own order.
        secureOptions: constants.SSL_OP_PRIORITIZE_CHACHA,
        handshakeTimeout: this.#handshakeMs,
        pskCallback: (socket, identity) => this.#claim(socket, identity),
      },
      (socket) => this.#secured(socket),
    )
    // At most this many connections, lanes and handshakes together: a flood of sockets that never finish a
    // handshake (each ends after `handshakeMs`) cannot take more, and a puller refused here uses its stream.
    server.maxConnections = this.#maxConnections
    server.on('drop', () => {
      this.#stats.refused++
    })
    server.on('connection', (raw: net.Socket) => this.#connection(raw))
    // A wrong or spent ticket, a silent socket, garbage: the handshake fails and the socket is gone.
    // Node leaves the socket open after a handshake timeout: closed here.
    server.on('tlsClientError', (_err, socket) => {
      this.#stats.refused++
      socket.destroy()
    })
    server.on('error', (err) => this.#log.warn({ err: err.message }, 'the fast lane for blocks failed'))
    const ok = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false))
      server.listen({ port: 0 }, () => resolve(true))
    })
    if (!ok) {
      this.#retryAt = Date.now() + LISTEN_RETRY_MS
      this.#log.warn('cannot listen for fast lanes; blocks go over libp2p streams only for now')
      return false
    }
    if (this.#stopped) {
      server.close()
      return false
    }
    this.#server = server
    this.#port = (server.address() as net.AddressInfo).port
    return true
  }

  async stop(): Promise<void> {
    this.#stopped = true
    await this.#starting?.catch(() => {})
    for (const t of this.#tickets.values()) clearTimeout(t.timer)
    this.#tickets.clear()
    for (const s of this.#sockets) s.destroy()
    const server = this.#server
    this.#server = undefined
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  /**
   * A one-time offer for the peer at the other end of an authenticated stream; undefined when this node
   * cannot listen (or has stopped) or holds too many unclaimed tickets. The first offer starts the listener.
   */
  async offer(maxRead: number, onLane: (ch: FrameChannel) => void): Promise<Uint8Array | undefined> {
    if (this.#tickets.size >= 1_000 || !(await this.start())) return undefined
    const offer: Offer = {
      port: this.#port,
      ticket: randomBytes(TICKET_BYTES),
      secret: randomBytes(SECRET_BYTES),
    }
    const key = pskIdentity(offer.ticket)
    const timer = setTimeout(() => this.#tickets.delete(key), this.#ticketTtlMs)
    timer.unref()
    this.#tickets.set(key, { secret: Buffer.from(offer.secret), maxRead, onLane, timer })
    return encodeOffer(offer)
  }

  /** Every TCP connection, so that stop() can end it (the lanes and those still in their handshake). */
  #connection(raw: net.Socket): void {
    this.#sockets.add(raw)
    raw.once('close', () => this.#sockets.delete(raw))
  }

  /** The PSK for a ticket, once: a second handshake with it, or one after its time, fails. */
  #claim(socket: TLS.TLSSocket, identity: string): Buffer | null {
    const t = this.#tickets.get(identity)
    if (!t) return null
    this.#tickets.delete(identity)
    clearTimeout(t.timer)
    this.#claimed.set(socket, t)
    return t.secret
  }

  #secured(socket: TLS.TLSSocket): void {
    const t = this.#claimed.get(socket)
    if (!t) {
      this.#stats.refused++
      socket.destroy()
      return
    }
    this.#stats.lanes++
    // The TLS socket, not only the TCP one it wraps: destroying the wrapped one leaves a lane open.
    this.#sockets.add(socket)
    socket.once('close', () => this.#sockets.delete(socket))
    t.onLane(new SocketChannel(socket, 'provider', t.maxRead))
  }
}

/**
 * The puller's side: TLS to an offer made on the stream to `host`; resolves once the handshake proved the
 * ticket and secret, rejects within `timeoutMs`.
 */
export function connectLane(
  host: string,
  offerBytes: Uint8Array,
  maxRead: number,
  signal: AbortSignal,
  timeoutMs = 1_000,
  ciphers = localCiphers(),
): Promise<FrameChannel> {
  const offer = decodeOffer(offerBytes)
  if (!offer) return Promise.reject(new Km1sError('ERR_BLOCKS_PROTOCOL', 'a malformed fast-lane offer'))
  return new Promise<FrameChannel>((resolve, reject) => {
    // The puller receives whole blocks: TLS decrypts into one buffer (no new buffer per read), and the lane
    // copies each chunk into its frame before the next read.
    let lane: SocketChannel | undefined
    // Node reads a TLS client into a buffer of its own since v15.1 (`onread`); @types/node does not list it.
    const options: TLS.ConnectionOptions & { onread: net.OnReadOpts } = {
      ...TLS_BASE,
      host,
      port: offer.port,
      ciphers,
      pskCallback: () => ({
        psk: Buffer.from(offer.secret),
        identity: pskIdentity(offer.ticket),
      }),
      // No certificate in a PSK handshake, and no host name to check: the key is the proof.
      checkServerIdentity: () => undefined,
      onread: {
        buffer: Buffer.allocUnsafe(64 << 10),
        callback: (n, buf) => lane?.feed(buf.subarray(0, n)) ?? true,
      },
    }
    const socket = tls().connect(options)
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
    socket.once('secureConnect', () => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      socket.off('error', fail)
      lane = new SocketChannel(socket, 'puller', maxRead, { fed: true })
      resolve(lane)
    })
  })
}
