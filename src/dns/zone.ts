// The cluster's names, built from replicated records alone (never from this node's liveness view), so
// every node that holds the same records gives the same answers (DESIGN.md "DNS"). Pure: records in, a
// zone out, and `answer` from a zone and a query.
import { isIPv4 } from 'node:net'
import * as z from '../common/schema.ts'
import {
  type EncodedBody,
  encodeBody,
  isPlainName,
  type Query,
  RCODE,
  type ResourceRecord,
  TYPE,
} from './wire.ts'

export const DOMAIN = 'km1s.internal'
/** Short: records change when replicas move, and resolvers must follow within seconds. */
export const CLUSTER_TTL = 5

/** The parts of a record the zone reads; anything else in the value is ignored. */
export interface ZoneRecord {
  key: string
  value: unknown
  deleted: boolean
}

const Ip4 = z.string().check(z.refine((s) => isIPv4(s)))
const ServiceFields = z.object({
  ip: z.optional(z.nullable(Ip4)),
  workload: z.optional(z.string()),
  headless: z.optional(z.boolean()),
  ports: z.optional(z.array(z.union([z.number(), z.object({ port: z.number() })]))),
})
const StatusFields = z.object({
  workload: z.optional(z.nullable(z.string())),
  ip: z.optional(z.nullable(Ip4)),
  state: z.optional(z.string()),
  /** Written by health checks (the services issue); absent means no check, so running is healthy. */
  healthy: z.optional(z.nullable(z.boolean())),
})
const NodeFields = z.object({ name: z.string(), addresses: z.optional(z.array(z.string())) })

interface NameData {
  a: string[]
  srv: Array<{ port: number; target: string; address: string }>
  /** Headless services: every answer lists the replicas in a fresh random order. */
  shuffle: boolean
}

export interface ZoneStats {
  names: number
  services: number
  nodes: number
  containers: number
}

const STRUCTURAL = new Set([DOMAIN, `node.${DOMAIN}`, `ctr.${DOMAIN}`])

export class Zone {
  readonly #names: Map<string, NameData>
  readonly #cache = new Map<string, EncodedBody>()
  readonly stats: ZoneStats

  constructor(names: Map<string, NameData>, stats: ZoneStats) {
    this.#names = names
    this.stats = stats
  }

  get(name: string): NameData | undefined {
    return this.#names.get(name)
  }

  /** The encoded answer sections for a name and type, cached while this zone lives (unless shuffled). */
  body(name: string, type: number, data: NameData, shuffle: (n: number) => number): EncodedBody {
    const key = `${type}/${name}`
    const cached = this.#cache.get(key)
    if (cached) return cached
    let body: EncodedBody
    if (type === TYPE.A) {
      const addresses = data.shuffle ? shuffled(data.a, shuffle) : data.a
      body = encodeBody(
        name,
        addresses.map((address) => ({ name, ttl: CLUSTER_TTL, data: { type: TYPE.A, address } })),
      )
    } else {
      const srv = data.shuffle ? shuffled(data.srv, shuffle) : data.srv
      const answers: ResourceRecord[] = srv.map((s) => ({
        name,
        ttl: CLUSTER_TTL,
        data: { type: TYPE.SRV, port: s.port, target: s.target },
      }))
      const seen = new Set<string>()
      const extra: ResourceRecord[] = []
      for (const s of srv) {
        if (seen.has(s.target)) continue
        seen.add(s.target)
        extra.push({ name: s.target, ttl: CLUSTER_TTL, data: { type: TYPE.A, address: s.address } })
      }
      body = encodeBody(name, answers, extra)
    }
    if (!data.shuffle) this.#cache.set(key, body)
    return body
  }
}

function shuffled<T>(items: T[], random: (n: number) => number): T[] {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = random(i + 1)
    ;[out[i], out[j]] = [out[j] as T, out[i] as T]
  }
  return out
}

function add(names: Map<string, NameData>, name: string): NameData {
  let d = names.get(name)
  if (!d) {
    d = { a: [], srv: [], shuffle: false }
    names.set(name, d)
  }
  return d
}

/** The IPv4 addresses of a node's multiaddrs, loopback excluded, in order, without repeats. */
export function nodeAddresses(multiaddrs: string[]): string[] {
  const out: string[] = []
  for (const m of multiaddrs) {
    const ip = /^\/ip4\/([0-9.]+)\//.exec(`${m}/`)?.[1]
    if (ip && isIPv4(ip) && !ip.startsWith('127.') && !out.includes(ip)) out.push(ip)
  }
  return out
}

interface Replica {
  container: string
  ip: string
}

/** The zone of a set of records: services, nodes and containers under km1s.internal. */
export function buildZone(records: Iterable<ZoneRecord>): Zone {
  const live = [...records]
    .filter((r) => !r.deleted)
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  const names = new Map<string, NameData>()
  const replicas = new Map<string, Replica[]>()
  const stats: ZoneStats = { names: 0, services: 0, nodes: 0, containers: 0 }
  const services: Array<{ name: string; value: z.infer<typeof ServiceFields> }> = []
  for (const r of live) {
    const [kind, a = '', b = ''] = r.key.split('/')
    if (kind === 'node') {
      const v = NodeFields.safeParse(r.value)
      if (!v.success || !isPlainName(v.data.name)) continue
      const ips = nodeAddresses(v.data.addresses ?? [])
      if (ips.length === 0) continue
      add(names, `${v.data.name}.node.${DOMAIN}`).a.push(...ips)
      stats.nodes++
    } else if (kind === 'status') {
      const v = StatusFields.safeParse(r.value)
      if (!v.success || !v.data.ip || !isPlainName(b)) continue
      add(names, `${b}.ctr.${DOMAIN}`).a.push(v.data.ip)
      stats.containers++
      const healthy = v.data.state === 'running' && v.data.healthy !== false
      if (healthy && v.data.workload) {
        const list = replicas.get(v.data.workload) ?? []
        list.push({ container: b, ip: v.data.ip })
        replicas.set(v.data.workload, list)
      }
    } else if (kind === 'service') {
      const v = ServiceFields.safeParse(r.value)
      if (v.success && isPlainName(a)) services.push({ name: a, value: v.data })
    }
  }
  for (const { name, value } of services) {
    const fqdn = `${name}.${DOMAIN}`
    const ports = [...new Set((value.ports ?? []).map((p) => (typeof p === 'number' ? p : p.port)))].filter(
      (p) => Number.isInteger(p) && p > 0 && p < 65536,
    )
    const backends = (replicas.get(value.workload ?? name) ?? []).sort((x, y) =>
      x.container < y.container ? -1 : 1,
    )
    const data = add(names, fqdn)
    stats.services++
    if (value.headless || !value.ip) {
      data.shuffle = true
      data.a.push(...backends.map((r) => r.ip))
    } else {
      data.a.push(value.ip)
    }
    for (const port of ports) {
      const srv = add(names, `_${port}._tcp.${fqdn}`)
      if (value.headless || !value.ip) {
        srv.shuffle = true
        for (const r of backends)
          srv.srv.push({ port, target: `${r.container}.ctr.${DOMAIN}`, address: r.ip })
      } else {
        srv.srv.push({ port, target: fqdn, address: value.ip })
      }
    }
  }
  stats.names = names.size
  return new Zone(names, stats)
}

export function isClusterName(name: string): boolean {
  return name === DOMAIN || name.endsWith(`.${DOMAIN}`)
}

export type Answer =
  | { kind: 'answer'; rcode: number; body: EncodedBody | undefined }
  /** Not a cluster name: the upstream resolvers answer it. */
  | { kind: 'forward' }

const NO_DATA = { kind: 'answer', rcode: RCODE.NOERROR, body: undefined } as const

/** What km1s answers to a query. `random(n)` is an integer in [0, n) (injected: tests fix it). */
export function answer(zone: Zone, q: Query, random: (n: number) => number): Answer {
  // ANY is the amplification favourite and no client of km1s needs it (RFC 8482 allows refusing it).
  if (q.type === TYPE.ANY) return { kind: 'answer', rcode: RCODE.REFUSED, body: undefined }
  if (!isClusterName(q.name)) {
    if (q.name === '' || !isPlainName(q.name))
      return { kind: 'answer', rcode: RCODE.REFUSED, body: undefined }
    return { kind: 'forward' }
  }
  if (q.klass !== 1) return { kind: 'answer', rcode: RCODE.REFUSED, body: undefined }
  const data = zone.get(q.name)
  if (!data)
    return STRUCTURAL.has(q.name) ? NO_DATA : { kind: 'answer', rcode: RCODE.NXDOMAIN, body: undefined }
  if (q.type === TYPE.A && data.a.length > 0)
    return { kind: 'answer', rcode: RCODE.NOERROR, body: zone.body(q.name, TYPE.A, data, random) }
  if (q.type === TYPE.SRV && data.srv.length > 0)
    return { kind: 'answer', rcode: RCODE.NOERROR, body: zone.body(q.name, TYPE.SRV, data, random) }
  return NO_DATA
}
