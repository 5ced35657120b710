// The control API's workload routes: user writes go through the store, durable before the API answers.
import type { ReplicaView } from '../api/schemas.ts'
import { Km1sError } from '../common/errors.ts'
import type { Member } from '../membership/index.ts'
import type { StatusValue, Store, WorkloadValue } from '../state/index.ts'
import type { Unplaced } from './place.ts'
import { specHash } from './workload.ts'

export interface WorkloadApiDeps {
  store: Store
  membership: { members(): Member[] }
  /** The local scheduler: what it could not place, and why. */
  scheduler?: { unplaced(): Unplaced[] }
  /** After a workload write or removal: its service record follows (services/). */
  afterWrite?: () => Promise<void> | undefined
}

const notFound = (name: string) =>
  new Km1sError('ERR_NOT_FOUND', `There is no workload named ${name}; 'km1s get' lists them.`)

export function createWorkloadHandlers({ store, membership, scheduler, afterWrite }: WorkloadApiDeps) {
  const get = (name: string): WorkloadValue => {
    const r = store.get(`workload/${name}`)
    if (!r) throw notFound(name)
    return r.value as WorkloadValue
  }
  const put = async (w: WorkloadValue): Promise<WorkloadValue> => {
    await store.put(`workload/${w.name}`, w, { durable: true })
    await afterWrite?.()
    return w
  }
  return {
    workloads: (): WorkloadValue[] => store.list('workload/').map((r) => r.value as WorkloadValue),
    workloadPut: (w: WorkloadValue) => put(w),
    workloadScale: (req: { name: string; replicas: number }) =>
      put({ ...get(req.name), replicas: req.replicas, stopped: false }),
    workloadStop: (req: { name: string }) => put({ ...get(req.name), stopped: true }),
    workloadRemove: async (req: { name: string }) => {
      get(req.name)
      await store.delete(`workload/${req.name}`, { durable: true })
      await afterWrite?.()
      return {}
    },
    ps: (): ReplicaView[] => replicaViews(store, membership.members(), Date.now()),
    unplaced: (): Unplaced[] => scheduler?.unplaced() ?? [],
  }
}

/** Every status record as a `km1s ps` row; a replica on a node this node sees as dead shows `unknown`. */
export function replicaViews(store: Store, members: Member[], now: number): ReplicaView[] {
  const live = new Set(members.filter((m) => m.state !== 'dead').map((m) => m.id))
  const hashes = new Map(
    store.list('workload/').map((r) => [r.key.slice(9), specHash(r.value as WorkloadValue)]),
  )
  return store
    .list('status/')
    .map((r) => {
      const [, peer = '', name = ''] = r.key.split('/')
      const s = r.value as StatusValue
      return {
        name,
        workload: s.workload,
        node: s.node,
        state: live.has(peer) ? s.state : ('unknown' as const),
        ip: s.ip,
        uptime: s.startedAt === null ? null : Math.max(0, Math.round((now - s.startedAt) / 1000)),
        restarts: s.restarts,
        reason: s.reason,
        index: s.index,
        spec: s.spec,
        current: hashes.get(s.workload) === s.spec,
      }
    })
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.node < b.node ? -1 : 1))
}
