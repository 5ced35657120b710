// The DNS server of a node: UDP and TCP on each listening address (loopback and the bridge's .1), answers
// from the current zone, other names through the forwarder, a per-source rate limit, and counters. Bad
// packets get FORMERR, REFUSED or nothing; no packet can throw out of a handler.
import { randomInt } from 'node:crypto'
import dgram from 'node:dgram'
import net from 'node:net'
import { errorMessage } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import { Forwarder, type Upstream } from './upstream.ts'
import { encodeError, encodeResponse, parseQuery, RCODE } from './wire.ts'
import { answer, buildZone, type Zone } from './zone.ts'

/** A token bucket per source address; old buckets are swept so a spoofing flood cannot grow the map. */
export class RateLimiter {
  readonly #rate: number
  readonly #burst: number
  readonly #now: () => number
  readonly #buckets = new Map<string, { tokens: number; at: number }>()
  #swept = 0

  constructor(perSecond: number, burst: number, now: () => number = Date.now) {
    this.#rate = perSecond
    this.#burst = burst
    this.#now = now
  }

  allow(source: string): boolean {
    const now = this.#now()
    let b = this.#buckets.get(source)
    if (!b) {
      if (this.#buckets.size >= 10_000 && now - this.#swept > 1_000) this.#sweep(now)
      b = { tokens: this.#burst, at: now }
      this.#buckets.set(source, b)
    } else {
      b.tokens = Math.min(this.#burst, b.tokens + ((now - b.at) * this.#rate) / 1000)
      b.at = now
    }
    if (b.tokens < 1) return false
    b.tokens -= 1
    return true
  }

  get size(): number {
    return this.#buckets.size
  }

  #sweep(now: number): void {
    this.#swept = now
    // A bucket idle long enough to be full again carries no information.
    const idle = (this.#burst / this.#rate) * 1000
    for (const [k, b] of this.#buckets) if (now - b.at >= idle) this.#buckets.delete(k)
  }
}

export interface DnsServerOptions {
  /** 53 on a node; 0 lets the system choose (tests). */
  port: number
  addresses: string[]
  upstreams: Upstream[]
  /** Queries per second per source address (and the burst); null: no limit. */
  rateLimit: { perSecond: number; burst: number } | null
  logger: Logger
  random?: (n: number) => number
  /** How often an address that could not be bound is tried again (default 2 s). */
  retryMs?: number
}

export interface DnsStats {
  queries: number
  answered: number
  nxdomain: number
  forwarded: number
  refused: number
  formerr: number
  dropped: number
  rateLimited: number
  tcpConnections: number
}

interface Listener {
  address: string
  udp: dgram.Socket
  tcp: net.Server
  port: number
}

const UDP_LIMIT = 512
const TCP_IDLE_MS = 10_000

export class DnsServer {
  readonly #o: DnsServerOptions
  readonly #log: Logger
  readonly #random: (n: number) => number
  readonly #limiter: RateLimiter | undefined
  readonly #forwarder: Forwarder
  readonly #listeners = new Map<string, Listener>()
  readonly #tcpSockets = new Set<net.Socket>()
  #zone: Zone = buildZone([])
  #wanted: string[] = []
  /** Addresses already warned about: a retry that fails again says so only at debug level. */
  readonly #warned = new Set<string>()
  #retry: NodeJS.Timeout | undefined
  #stopped = false
  readonly #stats: DnsStats = {
    queries: 0,
    answered: 0,
    nxdomain: 0,
    forwarded: 0,
    refused: 0,
    formerr: 0,
    dropped: 0,
    rateLimited: 0,
    tcpConnections: 0,
  }

  constructor(o: DnsServerOptions) {
    this.#o = o
    this.#log = o.logger
    this.#random = o.random ?? ((n) => randomInt(n))
    this.#limiter = o.rateLimit ? new RateLimiter(o.rateLimit.perSecond, o.rateLimit.burst) : undefined
    this.#forwarder = new Forwarder({ upstreams: o.upstreams, logger: o.logger })
  }

  setZone(zone: Zone): void {
    this.#zone = zone
  }

  get zone(): Zone {
    return this.#zone
  }

  async start(): Promise<void> {
    await this.#forwarder.start()
    await this.setAddresses(this.#o.addresses)
  }

  /**
   * Listens on exactly these addresses (idempotent). One that cannot be bound yet (the bridge's address
   * before it is there, a port another program holds) is tried again every `retryMs` until it is bound or
   * no longer wanted: without that, a bind that lost a race at start left the node's containers without
   * DNS until the subnet changed.
   */
  async setAddresses(addresses: string[]): Promise<void> {
    clearTimeout(this.#retry)
    this.#retry = undefined
    this.#wanted = [...new Set(addresses)]
    for (const address of this.#warned) if (!this.#wanted.includes(address)) this.#warned.delete(address)
    for (const [address, l] of this.#listeners) {
      if (!this.#wanted.includes(address)) {
        this.#listeners.delete(address)
        await closeListener(l)
      }
    }
    for (const address of this.#wanted) {
      if (this.#stopped || this.#listeners.has(address)) continue
      try {
        const l = await this.#listen(address)
        this.#listeners.set(address, l)
        this.#warned.delete(address)
        this.#log.info({ address, port: l.port }, 'DNS listening')
      } catch (err) {
        const first = !this.#warned.has(address)
        this.#warned.add(address)
        const fields = { address, port: this.#o.port, err: errorMessage(err) }
        if (first) this.#log.warn(fields, 'DNS cannot listen here yet; trying again')
        else this.#log.debug(fields, 'DNS still cannot listen here')
      }
    }
    if (!this.#stopped && this.missing().length > 0 && this.#retry === undefined) {
      this.#retry = setTimeout(() => {
        this.#retry = undefined
        void this.setAddresses(this.#wanted)
      }, this.#o.retryMs ?? 2_000)
      this.#retry.unref()
    }
  }

  /** The addresses and ports answering now. */
  listening(): Array<{ address: string; port: number }> {
    return [...this.#listeners.values()].map((l) => ({ address: l.address, port: l.port }))
  }

  /** Addresses wanted but not bound (the bridge before it exists, or a port in use). */
  missing(): string[] {
    return this.#wanted.filter((a) => !this.#listeners.has(a))
  }

  stats(): DnsStats & { forwarder: ReturnType<Forwarder['stats']>; limiterSources: number } {
    return { ...this.#stats, forwarder: this.#forwarder.stats(), limiterSources: this.#limiter?.size ?? 0 }
  }

  async stop(): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#retry)
    for (const s of this.#tcpSockets) s.destroy()
    await Promise.all([...this.#listeners.values()].map(closeListener))
    this.#listeners.clear()
    this.#forwarder.stop()
  }

  async #listen(address: string): Promise<Listener> {
    const udp = dgram.createSocket({ type: 'udp4' })
    udp.on('message', (msg, rinfo) => {
      const out = this.#handle(msg, rinfo.address)
      if (out instanceof Promise)
        out.then(
          (o) => replyUdp(udp, o, rinfo),
          (err) => this.#log.warn({ err: errorMessage(err) }, 'DNS query failed'),
        )
      else if (out) replyUdp(udp, out, rinfo)
    })
    udp.on('error', (err) => this.#log.debug({ err: errorMessage(err), address }, 'DNS UDP socket error'))
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject)
      udp.bind(this.#o.port, address, () => {
        udp.off('error', reject)
        resolve()
      })
    })
    const port = udp.address().port
    const tcp = net.createServer((socket) => this.#serveTcp(socket))
    tcp.maxConnections = 64
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject)
        tcp.listen(port, address, () => {
          tcp.off('error', reject)
          resolve()
        })
      })
    } catch (err) {
      udp.close()
      throw err
    }
    tcp.on('error', (err) => this.#log.debug({ err: errorMessage(err), address }, 'DNS TCP server error'))
    return { address, udp, tcp, port }
  }

  #serveTcp(socket: net.Socket): void {
    this.#stats.tcpConnections++
    this.#tcpSockets.add(socket)
    socket.setTimeout(TCP_IDLE_MS, () => socket.destroy())
    socket.on('error', () => {})
    socket.once('close', () => this.#tcpSockets.delete(socket))
    let buffered: Buffer = Buffer.alloc(0)
    socket.on('data', (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk])
      while (buffered.length >= 2) {
        const len = buffered.readUInt16BE(0)
        if (buffered.length < 2 + len) break
        const msg = buffered.subarray(2, 2 + len)
        buffered = buffered.subarray(2 + len)
        Promise.resolve(this.#handle(msg, socket.remoteAddress ?? '?')).then(
          (out) => {
            if (!out) return void socket.destroy()
            const frame = Buffer.allocUnsafe(2 + out.length)
            frame.writeUInt16BE(out.length, 0)
            out.copy(frame, 2)
            if (!socket.destroyed) socket.write(frame)
          },
          () => socket.destroy(),
        )
      }
    })
  }

  /** The answer to one message (a promise when it goes upstream), or undefined to send nothing. */
  #handle(msg: Buffer, source: string): Buffer | undefined | Promise<Buffer> {
    const s = this.#stats
    s.queries++
    // The node's own processes (loopback) are the operator's; the limit is for containers and neighbours.
    if (this.#limiter && !source.startsWith('127.') && !this.#limiter.allow(source)) {
      s.rateLimited++
      return undefined
    }
    const parsed = parseQuery(msg)
    if (!parsed.ok) {
      if (parsed.drop) {
        s.dropped++
        return undefined
      }
      if (parsed.rcode === RCODE.FORMERR) s.formerr++
      else s.refused++
      return encodeError(parsed.id, parsed.rd, parsed.rcode)
    }
    const q = parsed.query
    const a = answer(this.#zone, q, this.#random)
    if (a.kind === 'forward') {
      s.forwarded++
      return this.#forwarder.resolve(msg, q)
    }
    if (a.rcode === RCODE.NXDOMAIN) s.nxdomain++
    else if (a.rcode === RCODE.REFUSED) s.refused++
    else s.answered++
    return encodeResponse(msg, q, a.rcode, a.body, a.rcode !== RCODE.REFUSED)
  }
}

/**
 * An answer that fits plain UDP: when too big, the header and question alone with TC set, which sends the
 * client to TCP (RFC 1035 §4.2.1). The question ends where the answers begin: the first 12 bytes plus the
 * question's name and 4 bytes, found again here rather than carried along, since this is the rare path.
 */
export function fitUdp(out: Buffer): Buffer {
  if (out.length <= UDP_LIMIT) return out
  let at = 12
  while (at < out.length && out[at] !== 0) at += (out[at] ?? 0) + 1
  const end = Math.min(out.length, at + 5)
  const cut = Buffer.from(out.subarray(0, end))
  cut[2] = (cut[2] ?? 0) | 0x02
  cut.writeUInt16BE(0, 6)
  cut.writeUInt16BE(0, 8)
  cut.writeUInt16BE(0, 10)
  return cut
}

/**
 * Sends an answer back on the socket its question came in on. A forwarded answer can come after that socket
 * closed (the agent stopping, an address no longer wanted: stopping the forwarder answers what it still
 * waits for with SERVFAIL); then nobody is there to hear it, and dgram's throw would be an unhandled
 * rejection, which ends the process.
 */
function replyUdp(udp: dgram.Socket, out: Buffer, to: dgram.RemoteInfo): void {
  try {
    udp.send(fitUdp(out), to.port, to.address)
  } catch {
    // ERR_SOCKET_DGRAM_NOT_RUNNING: closed since the question came.
  }
}

async function closeListener(l: Listener): Promise<void> {
  await Promise.all([
    new Promise<void>((resolve) => l.udp.close(() => resolve())),
    new Promise<void>((resolve) => l.tcp.close(() => resolve())),
  ])
}
