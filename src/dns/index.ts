// The DNS subsystem as the agent runs it: the server, fed a fresh zone whenever a record it reads changes.
import { readFile } from 'node:fs/promises'
import type { Logger } from '../common/logger.ts'
import type { Store } from '../state/index.ts'
import { DnsServer, type DnsStats } from './server.ts'
import { parseResolvConf, type Upstream } from './upstream.ts'
import { buildZone, type ZoneStats } from './zone.ts'

export { DnsServer, fitUdp, RateLimiter } from './server.ts'
export { parseResolvConf, parseUpstream, type Upstream } from './upstream.ts'
export { buildZone, DOMAIN, type Zone } from './zone.ts'

export const DEFAULT_DNS_PORT = 53
/** Per source address: far above what a container's resolver asks, far below a flood. */
export const DEFAULT_RATE_LIMIT = { perSecond: 2_000, burst: 4_000 }
/** Record changes are batched this long before the zone is rebuilt (the target is ≤ 1 s to follow one). */
const REBUILD_DELAY_MS = 20
const ZONE_PREFIXES = ['node/', 'status/', 'service/']

export interface DnsServiceOptions {
  store: Store
  port: number
  addresses: string[]
  /** undefined: the host's /etc/resolv.conf; [] forwards nothing (other names get SERVFAIL). */
  upstreams: Upstream[] | undefined
  rateLimit?: { perSecond: number; burst: number } | null
  logger: Logger
}

export interface DnsStatus {
  port: number
  listening: Array<{ address: string; port: number }>
  missing: string[]
  upstreams: Upstream[]
  zone: ZoneStats
  stats: DnsStats
}

export class DnsService {
  readonly #o: DnsServiceOptions
  #server: DnsServer | undefined
  #upstreams: Upstream[] = []
  #off: (() => void) | undefined
  #timer: NodeJS.Timeout | undefined

  constructor(o: DnsServiceOptions) {
    this.#o = o
  }

  async start(): Promise<void> {
    const o = this.#o
    this.#upstreams =
      o.upstreams ??
      parseResolvConf(
        await readFile('/etc/resolv.conf', 'utf8').catch(() => ''),
        o.port === 53 ? o.addresses : [],
      )
    const server = new DnsServer({
      port: o.port,
      addresses: o.addresses,
      upstreams: this.#upstreams,
      rateLimit: o.rateLimit === undefined ? DEFAULT_RATE_LIMIT : o.rateLimit,
      logger: o.logger,
    })
    server.setZone(buildZone(o.store.all().values()))
    this.#off = o.store.onChange((change) => {
      if (!ZONE_PREFIXES.some((p) => change.key.startsWith(p)) || this.#timer) return
      this.#timer = setTimeout(() => {
        this.#timer = undefined
        server.setZone(buildZone(o.store.all().values()))
      }, REBUILD_DELAY_MS)
    })
    this.#server = server
    await server.start()
  }

  /** Listens on these addresses (a bridge address that appears or moves later). */
  async setAddresses(addresses: string[]): Promise<void> {
    await this.#server?.setAddresses(addresses)
  }

  status(): DnsStatus | undefined {
    const s = this.#server
    if (!s) return undefined
    return {
      port: this.#o.port,
      listening: s.listening(),
      missing: s.missing(),
      upstreams: this.#upstreams,
      zone: s.zone.stats,
      stats: s.stats(),
    }
  }

  async stop(): Promise<void> {
    this.#off?.()
    clearTimeout(this.#timer)
    await this.#server?.stop()
  }
}
