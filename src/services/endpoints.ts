// A service's endpoints: the replicas of its workload that serve, by the same rule DNS answers with
// (dns/zone.ts): a status record in state `running` whose `healthy` is not false. Records alone, never
// this node's liveness view, so the load balancer and DNS agree with each other on every node.
import { ServiceValue, StatusValue } from '../state/record.ts'

export interface RecordLike {
  key: string
  value: unknown
  deleted: boolean
}

export interface ServiceEndpoints {
  name: string
  /** null for a headless service. */
  ip: string | null
  ports: number[]
  workload: string
  headless: boolean
  /** IPs of the serving replicas, sorted by container name. */
  endpoints: string[]
  /** Replicas with a status record, serving or not. */
  total: number
}

/** Every valid service with its serving replicas, sorted by name. */
export function serviceEndpoints(records: Iterable<RecordLike>): ServiceEndpoints[] {
  const services: Array<[string, ServiceValue]> = []
  const replicas = new Map<string, Array<{ container: string; ip: string | null; serving: boolean }>>()
  for (const r of records) {
    if (r.deleted) continue
    if (r.key.startsWith('service/')) {
      const v = ServiceValue.safeParse(r.value)
      if (v.success) services.push([r.key.slice(8), v.data])
    } else if (r.key.startsWith('status/')) {
      const v = StatusValue.safeParse(r.value)
      if (!v.success) continue
      const container = r.key.split('/')[2] ?? ''
      const list = replicas.get(v.data.workload) ?? []
      list.push({ container, ip: v.data.ip, serving: v.data.state === 'running' && v.data.healthy })
      replicas.set(v.data.workload, list)
    }
  }
  return services
    .sort((a, b) => (a[0] < b[0] ? -1 : 1))
    .map(([name, s]) => {
      const list = (replicas.get(s.workload) ?? []).sort((a, b) =>
        a.container < b.container ? -1 : a.container > b.container ? 1 : 0,
      )
      return {
        name,
        ip: s.ip,
        ports: s.ports,
        workload: s.workload,
        headless: s.headless,
        endpoints: [...new Set(list.filter((x) => x.serving && x.ip !== null).map((x) => x.ip as string))],
        total: list.length,
      }
    })
}
