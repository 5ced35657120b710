// Names outside km1s.internal go to the host's upstream resolvers, with a cache, and fail fast when the
// home network is offline: after every upstream timed out, answers are SERVFAIL at once for a few seconds
// (then one query probes again), so a container's resolver never waits on a dead link for cluster names'
// neighbours. One UDP socket, random query ids, and answers accepted only from the upstream asked.
import { randomInt } from 'node:crypto'
import dgram from 'node:dgram'
import { isIPv4 } from 'node:net'
import { errorMessage } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import { encodeResponse, type Query, RCODE, readAnswerTtls } from './wire.ts'

export interface Upstream {
  address: string
  port: number
}

/** The IPv4 name servers of a resolv.conf, minus `exclude` (km1s's own listening addresses on port 53). */
export function parseResolvConf(text: string, exclude: string[] = []): Upstream[] {
  const out: Upstream[] = []
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line)
    const address = m?.[1]
    if (address && isIPv4(address) && !exclude.includes(address) && !out.some((u) => u.address === address))
      out.push({ address, port: 53 })
  }
  return out
}

/** `ADDRESS[:PORT]` (IPv4) as a command-line flag gives it; undefined when it is not one. */
export function parseUpstream(text: string): Upstream | undefined {
  const [address = '', port = '53', ...rest] = text.split(':')
  const n = Number(port)
  if (rest.length > 0 || !isIPv4(address) || !Number.isInteger(n) || n < 1 || n > 65535) return undefined
  return { address, port: n }
}

/** Seconds an upstream answer may be reused: its smallest TTL, capped; negative answers briefly. */
export function cacheSeconds(response: Buffer): number {
  const r = readAnswerTtls(response)
  if (!r) return 0
  if (r.rcode === RCODE.NXDOMAIN || (r.rcode === RCODE.NOERROR && r.answers === 0)) return 30
  if (r.rcode !== RCODE.NOERROR) return 0
  return Math.min(300, r.minTtl)
}

interface Pending {
  id: number
  upstream: Upstream
  sent: Buffer
  waiters: Array<(response: Buffer | undefined) => void>
  timer: NodeJS.Timeout
  tried: number
}

export interface ForwarderOptions {
  upstreams: Upstream[]
  timeoutMs?: number
  /** After every upstream failed, how long answers are SERVFAIL without asking. */
  downForMs?: number
  maxPending?: number
  maxCached?: number
  logger: Logger
  now?: () => number
}

export interface ForwarderStats {
  forwarded: number
  cacheHits: number
  failures: number
  pending: number
  cached: number
}

export class Forwarder {
  readonly #o: Required<Omit<ForwarderOptions, 'logger'>> & { logger: Logger }
  #socket: dgram.Socket | undefined
  readonly #pending = new Map<string, Pending>()
  readonly #byId = new Map<number, string>()
  readonly #cache = new Map<string, { response: Buffer; expires: number }>()
  #downUntil = 0
  readonly #stats = { forwarded: 0, cacheHits: 0, failures: 0 }

  constructor(o: ForwarderOptions) {
    this.#o = {
      timeoutMs: 1_000,
      downForMs: 5_000,
      maxPending: 512,
      maxCached: 2_000,
      now: Date.now,
      ...o,
    }
  }

  async start(): Promise<void> {
    if (this.#o.upstreams.length === 0) return
    const socket = dgram.createSocket('udp4')
    socket.on('message', (msg, rinfo) => this.#onAnswer(msg, rinfo))
    socket.on('error', (err) => this.#o.logger.debug({ err: errorMessage(err) }, 'DNS upstream socket error'))
    await new Promise<void>((resolve) => socket.bind(0, resolve))
    this.#socket = socket
  }

  stop(): void {
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer)
      for (const w of p.waiters) w(undefined)
    }
    this.#pending.clear()
    this.#byId.clear()
    this.#socket?.close()
    this.#socket = undefined
  }

  stats(): ForwarderStats {
    return { ...this.#stats, pending: this.#pending.size, cached: this.#cache.size }
  }

  /** The answer for the asker of `raw` (its id, its question), from the cache or an upstream. */
  async resolve(raw: Buffer, q: Query): Promise<Buffer> {
    const key = `${q.type}/${q.klass}/${q.name}`
    const now = this.#o.now()
    const hit = this.#cache.get(key)
    if (hit && hit.expires > now) {
      this.#stats.cacheHits++
      return rewrite(hit.response, raw, q)
    }
    if (hit) this.#cache.delete(key)
    const servfail = () => encodeResponse(raw, q, RCODE.SERVFAIL, undefined, false)
    if (!this.#socket || now < this.#downUntil) return servfail()
    const response = await new Promise<Buffer | undefined>((resolve) => {
      const pending = this.#pending.get(key)
      if (pending) return void pending.waiters.push(resolve)
      if (this.#pending.size >= this.#o.maxPending) return resolve(undefined)
      this.#send(key, raw, q, 0, [resolve])
    })
    return response ? rewrite(response, raw, q) : servfail()
  }

  #send(key: string, raw: Buffer, q: Query, tried: number, waiters: Pending['waiters']): void {
    const upstream = this.#o.upstreams[tried % this.#o.upstreams.length] as Upstream
    let id = randomInt(0x10000)
    while (this.#byId.has(id)) id = randomInt(0x10000)
    const sent = Buffer.from(raw.subarray(0, q.questionEnd))
    sent[0] = id >> 8
    sent[1] = id & 0xff
    sent.writeUInt16BE(0, 6)
    sent.writeUInt16BE(0, 8)
    sent.writeUInt16BE(0, 10)
    const timer = setTimeout(() => this.#timeout(key), this.#o.timeoutMs)
    timer.unref()
    this.#pending.set(key, { id, upstream, sent, waiters, timer, tried })
    this.#byId.set(id, key)
    this.#stats.forwarded++
    this.#socket?.send(sent, upstream.port, upstream.address, (err) => {
      if (err) this.#o.logger.debug({ err: errorMessage(err), upstream }, 'DNS upstream send failed')
    })
  }

  #timeout(key: string): void {
    const p = this.#pending.get(key)
    if (!p) return
    this.#pending.delete(key)
    this.#byId.delete(p.id)
    const next = p.tried + 1
    if (next < this.#o.upstreams.length) {
      const q = { questionEnd: p.sent.length } as Query
      this.#send(key, p.sent, q, next, p.waiters)
      return
    }
    this.#stats.failures++
    this.#downUntil = this.#o.now() + this.#o.downForMs
    this.#o.logger.warn(
      { upstreams: this.#o.upstreams.map((u) => `${u.address}:${u.port}`), downForMs: this.#o.downForMs },
      'no upstream DNS server answered; other names fail at once for a while',
    )
    for (const w of p.waiters) w(undefined)
  }

  #onAnswer(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (msg.length < 12) return
    const key = this.#byId.get(msg.readUInt16BE(0))
    const p = key === undefined ? undefined : this.#pending.get(key)
    // Only the upstream we asked, answering our id with our question, is believed.
    if (!p || key === undefined || rinfo.address !== p.upstream.address || rinfo.port !== p.upstream.port)
      return
    if (
      !((msg[2] ?? 0) & 0x80) ||
      msg.length < p.sent.length ||
      !msg.subarray(12, p.sent.length).equals(p.sent.subarray(12))
    )
      return
    clearTimeout(p.timer)
    this.#pending.delete(key)
    this.#byId.delete(p.id)
    this.#downUntil = 0
    const seconds = cacheSeconds(msg)
    if (seconds > 0) {
      if (this.#cache.size >= this.#o.maxCached) {
        const oldest = this.#cache.keys().next().value
        if (oldest !== undefined) this.#cache.delete(oldest)
      }
      this.#cache.set(key, { response: Buffer.from(msg), expires: this.#o.now() + seconds * 1000 })
    }
    for (const w of p.waiters) w(msg)
  }
}

/** An upstream answer readdressed to this asker: its id, its RD bit, its question's letter case. */
function rewrite(response: Buffer, raw: Buffer, q: Query): Buffer {
  const out = Buffer.from(response)
  out[0] = q.id >> 8
  out[1] = q.id & 0xff
  out[2] = ((out[2] ?? 0) & 0xfe) | (q.rd ? 1 : 0)
  raw.copy(out, 12, 12, q.questionEnd)
  return out
}
