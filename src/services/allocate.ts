// Which services exist and at which virtual IP: a pure plan from the workload and service records. Every
// node runs the same plan over the same records, so every node writes the same values (or nothing), and
// two services that took one IP while the cluster was split are settled the same way everywhere: the
// earlier claim keeps it, then the smaller name; the loser moves to its next free IP. No clock, no I/O.
import { createHash } from 'node:crypto'
import { SERVICE_CIDR, ServiceValue, type WorkloadValue } from '../state/record.ts'

export { SERVICE_CIDR }

const BASE = (10 << 24) | (43 << 16)
const SIZE = 1 << 16

export function ipAt(index: number): string {
  const n = BASE + index
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`
}

function indexOf(ip: string): number {
  const p = ip.split('.').map(Number)
  return (((p[2] as number) << 8) | (p[3] as number)) >>> 0
}

/** Where a service's probe starts: spread by its name, so IPs rarely depend on creation order. */
export function homeIndex(name: string): number {
  return createHash('sha256').update(name).digest().readUInt32BE(0) % SIZE
}

/**
 * The first free IP from the name's home position, probing upward and around; never the range's network
 * (.0.0) or broadcast (.255.255) address. Undefined when all 65534 are taken.
 */
export function chooseIp(name: string, taken: ReadonlySet<string>): string | undefined {
  const home = homeIndex(name)
  for (let i = 0; i < SIZE; i++) {
    const index = (home + i) % SIZE
    if (index === 0 || index === SIZE - 1) continue
    const ip = ipAt(index)
    if (!taken.has(ip)) return ip
  }
  return undefined
}

export interface Claim {
  name: string
  claimedAt: number
}

/** True when `a` keeps an IP it shares with `b`: the earlier claim, then the smaller name. */
export function claimWins(a: Claim, b: Claim): boolean {
  if (a.claimedAt !== b.claimedAt) return a.claimedAt < b.claimedAt
  return a.name < b.name
}

export interface ServicePlan {
  /** Records to write (new, moved, or changed ports/workload/headless). */
  put: Map<string, ServiceValue>
  /** Service names whose record goes: no workload names them any more. */
  remove: string[]
}

/**
 * The service records the workloads want, given the ones stored. A service is named by a workload's
 * `service` field; when two workloads name one service, the smaller workload name has it.
 */
export function planServices(
  workloads: Iterable<WorkloadValue>,
  stored: ReadonlyMap<string, unknown>,
  now: number,
): ServicePlan {
  const wanted = new Map<string, WorkloadValue>()
  for (const w of [...workloads].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (w.service !== null && !wanted.has(w.service)) wanted.set(w.service, w)
  }
  const current = new Map<string, ServiceValue>()
  for (const [name, value] of stored) {
    const parsed = ServiceValue.safeParse(value)
    if (parsed.success) current.set(name, parsed.data)
  }
  // Who holds each IP: the winner of every group of services that claim it.
  const holder = new Map<string, string>()
  for (const [name, v] of [...current].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    if (v.ip === null || !wanted.has(name)) continue
    const other = holder.get(v.ip)
    const otherValue = other === undefined ? undefined : current.get(other)
    if (
      other === undefined ||
      (otherValue &&
        claimWins({ name, claimedAt: v.claimedAt }, { name: other, claimedAt: otherValue.claimedAt }))
    )
      holder.set(v.ip, name)
  }
  const taken = new Set(holder.keys())
  const put = new Map<string, ServiceValue>()
  for (const name of [...wanted.keys()].sort()) {
    const w = wanted.get(name) as WorkloadValue
    const have = current.get(name)
    const headless = w.headless === true
    let ip: string | null = null
    let claimedAt = have?.claimedAt ?? now
    if (!headless) {
      if (have?.ip && holder.get(have.ip) === name) ip = have.ip
      else {
        ip = chooseIp(name, taken) ?? null
        if (ip === null) continue // the range is full: no record until one frees up
        claimedAt = now
        taken.add(ip)
      }
    }
    const next: ServiceValue = { ip, workload: w.name, headless, ports: [...w.ports], claimedAt }
    if (!have || !sameService(have, next)) put.set(name, next)
  }
  const remove = [...stored.keys()].filter((name) => !wanted.has(name)).sort()
  return { put, remove }
}

function sameService(a: ServiceValue, b: ServiceValue): boolean {
  return (
    a.ip === b.ip &&
    a.workload === b.workload &&
    a.headless === b.headless &&
    a.claimedAt === b.claimedAt &&
    a.ports.join() === b.ports.join()
  )
}

/** The IP's index in the range (tests). */
export { indexOf as serviceIndex }
