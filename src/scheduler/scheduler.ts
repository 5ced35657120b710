// The reconcile loop of one node: placement over this node's view, then start, stop and update the replicas
// assigned here through the Runtime, and write their status records. Passes are cheap and synchronous;
// container work runs in the background, one operation per container at a time.
import { errorMessage } from '../common/errors.ts'
import { type GridTimer, onGrid } from '../common/grid.ts'
import type { Logger } from '../common/logger.ts'
import type { Member } from '../membership/index.ts'
import type { ContainerStatus, Runtime } from '../runtime/types.ts'
import { canonicalJson, type StatusValue, type Store, type WorkloadValue } from '../state/index.ts'
import { type PlacementNode, type PlacementWorkload, place, type Unplaced } from './place.ts'
import { chooseUpdate, type ReplicaReport } from './rolling.ts'
import type { ArtifactSource, HealthCheck } from './types.ts'
import { ARCH_LABEL, containerSpecOf, parseReplicaName, replicaName, specHash } from './workload.ts'

export interface SchedulerInit {
  selfId: string
  nodeName: () => string
  store: Store
  membership: { members(): Member[] }
  runtime: Runtime | undefined
  /** The artifacts subsystem; undefined until it is merged (a workload with an artifact then waits). */
  artifacts?: ArtifactSource
  /** The health seam for rolling updates: true until health checks exist. */
  isHealthy?: HealthCheck
  logger: Logger
  /** How often a pass runs without any event (liveness changes have none). */
  tickMs?: number
  /** After start, nodes not heard from yet count as live this long: a restart must not grab every replica. */
  startupGraceMs?: number
  /** A replica placed elsewhere stops once the new owner runs it, and not before this long (view flicker). */
  stopDelayMs?: number
  /**
   * …and not before the set of live nodes has stayed the same this long. At a heal the sides hear each
   * other's nodes one by one, and placement over a half-healed view can move a replica that the full view
   * puts back: the new owner starts a copy quickly, and without this the old one stopped and started again.
   */
  viewSettleMs?: number
  /** …or after this long even if the new owner never reports it running. */
  handoverTimeoutMs?: number
  now?: () => number
}

export interface SchedulerStats {
  passes: number
  started: number
  stopped: number
  replaced: number
  failures: number
}

const STATUS = 'status/'
const WORKLOAD = 'workload/'
const ARTIFACT_RETRY_MS = 5_000
const FAILED_RETRY_MS = 5_000

interface Pending {
  state: StatusValue['state']
  reason: string | null
  retryAt: number
}

export class Scheduler {
  readonly #init: SchedulerInit
  readonly #log: Logger
  readonly #now: () => number
  readonly #ops = new Map<string, Promise<void>>()
  /** Replicas assigned here that wait (artifact missing, update turn): their status says why. */
  readonly #pending = new Map<string, Pending>()
  /** Local replicas no longer assigned here, since when. */
  readonly #unassignedSince = new Map<string, number>()
  #liveKey = ''
  #viewChangedAt = 0
  /** Local replicas the runtime could not make, since when. */
  readonly #failedSince = new Map<string, number>()
  readonly #lastPut = new Map<string, { text: string; at: number }>()
  readonly #stats: SchedulerStats = { passes: 0, started: 0, stopped: 0, replaced: 0, failures: 0 }
  #startedAt = 0
  #timer: GridTimer | undefined
  #soon: NodeJS.Immediate | undefined
  #unsubscribe: Array<() => void> = []
  #running = false
  #unplaced: Unplaced[] = []

  constructor(init: SchedulerInit) {
    this.#init = init
    this.#log = init.logger.child({ subsystem: 'scheduler' })
    this.#now = init.now ?? Date.now
  }

  start(): void {
    if (this.#running) return
    this.#running = true
    this.#startedAt = this.#now()
    const { store, runtime } = this.#init
    this.#unsubscribe.push(
      store.onChange((c) => {
        // Our own status writes would only echo: everything else may change the placement or an update's turn.
        if (c.origin === 'local' && c.key.startsWith(STATUS)) return
        this.#schedule()
      }),
    )
    if (runtime?.onChange) this.#unsubscribe.push(runtime.onChange(() => this.#schedule()))
    this.#timer = onGrid(this.#init.tickMs ?? 500, () => this.#pass())
    this.#schedule()
  }

  /** Stops the loop and waits for container operations in flight; containers keep running. */
  async stop(): Promise<void> {
    if (!this.#running) return
    this.#running = false
    this.#timer?.stop()
    if (this.#soon) clearImmediate(this.#soon)
    for (const u of this.#unsubscribe) u()
    this.#unsubscribe = []
    await Promise.allSettled([...this.#ops.values()])
  }

  /** The replicas the last pass could place nowhere in this node's view, with why. */
  unplaced(): Unplaced[] {
    return this.#unplaced
  }

  stats(): SchedulerStats {
    return { ...this.#stats }
  }

  /** A replica's health changed (services/health.ts): its status is written again at once. */
  refresh(): void {
    this.#schedule()
  }

  /** Makes a local replica again (failed health checks): removed now, started afresh by the next pass. */
  restartReplica(name: string, why: string): void {
    const { runtime, store, selfId } = this.#init
    if (!runtime || this.#ops.has(name) || !runtime.get(name)) return
    this.#log.info({ container: name, why }, 'making a replica again')
    this.#run(name, async () => {
      const own = store.get(`${STATUS}${selfId}/${name}`)?.value as StatusValue | undefined
      if (own) this.#putStatus(name, { ...own, state: 'stopping', healthy: false, reason: why })
      await runtime.remove(name)
      this.#stats.replaced++
    })
  }

  #schedule(): void {
    if (!this.#running || this.#soon) return
    this.#soon = setImmediate(() => {
      this.#soon = undefined
      this.#pass()
    })
  }

  #pass(): void {
    if (!this.#running) return
    try {
      this.#reconcile()
    } catch (err) {
      this.#stats.failures++
      this.#log.error({ err: errorMessage(err) }, 'a reconcile pass failed')
    }
  }

  /** This node's view as placement input; during the start-up grace, unheard nodes count as live. */
  #view(now: number): { nodes: PlacementNode[]; known: number; majority: boolean; self: PlacementNode } {
    const { store } = this.#init
    const grace = now - this.#startedAt < (this.#init.startupGraceMs ?? 5_000)
    const members = this.#init.membership.members()
    let reallyLive = 0
    const nodes: PlacementNode[] = []
    let self: PlacementNode | undefined
    for (const m of members) {
      const live = m.state !== 'dead'
      if (live) reallyLive++
      if (!live && !(grace && m.lastHeard === 0)) continue
      const labels = (store.get(`label/${m.id}`)?.value ?? {}) as Record<string, string>
      const node: PlacementNode = {
        id: m.id,
        name: m.info.name,
        arch: labels[ARCH_LABEL] ?? m.info.arch,
        cpus: m.info.cpus,
        memory: m.info.memory,
        labels,
      }
      if (m.self) self = node
      nodes.push(node)
    }
    if (!self) throw new Error('membership lists no self')
    return { nodes, known: members.length, majority: reallyLive * 2 > members.length, self }
  }

  #reconcile(): void {
    const { store, runtime, selfId } = this.#init
    const now = this.#now()
    this.#stats.passes++
    // No workload and nothing of this node's to stop: skip the view and placement, which an idle fleet's
    // agents would otherwise compute twice a second for nothing.
    if (
      this.#ops.size === 0 &&
      store.list(WORKLOAD).length === 0 &&
      store.list(`status/${selfId}/`).length === 0
    ) {
      this.#unplaced = []
      return
    }
    const grace = now - this.#startedAt < (this.#init.startupGraceMs ?? 5_000)
    const workloads = new Map<string, WorkloadValue>()
    for (const r of store.list(WORKLOAD))
      workloads.set(r.key.slice(WORKLOAD.length), r.value as WorkloadValue)
    const view = this.#view(now)
    const input: PlacementWorkload[] = []
    for (const w of workloads.values()) {
      if (w.stopped) continue
      input.push({
        name: w.name,
        replicas: w.replicas,
        cpu: w.cpu,
        memory: w.memory,
        arches: w.arch
          ? [w.arch]
          : w.artifact && this.#init.artifacts
            ? this.#init.artifacts.arches(w.artifact)
            : null,
        labels: w.labels,
        exclusive: w.exclusive,
      })
    }
    const { assignments, unplaced } = place({ workloads: input, nodes: view.nodes, knownNodes: view.known })
    this.#unplaced = unplaced
    const liveIds = new Set(view.nodes.map((n) => n.id))
    const liveKey = [...liveIds].sort().join()
    if (liveKey !== this.#liveKey) {
      this.#liveKey = liveKey
      this.#viewChangedAt = now
    }
    const viewSettled = now - this.#viewChangedAt >= (this.#init.viewSettleMs ?? 3_000)

    // Every replica's status, cluster-wide, for update turns and hand-overs.
    const statuses = new Map<string, Array<{ peer: string; value: StatusValue }>>()
    for (const r of store.list(STATUS)) {
      const [, peer = '', name = ''] = r.key.split('/')
      if (!liveIds.has(peer)) continue
      const list = statuses.get(name) ?? []
      list.push({ peer, value: r.value as StatusValue })
      statuses.set(name, list)
    }
    const statusOn = (name: string, peer: string) => statuses.get(name)?.find((s) => s.peer === peer)?.value

    const local = new Map<string, ContainerStatus>()
    for (const c of runtime?.list() ?? []) {
      const parsed = parseReplicaName(c.name)
      // Only replicas are ours: a container made with `km1s containers create` is left alone.
      if (parsed && (store.all().has(`${WORKLOAD}${parsed.workload}`) || statusOn(c.name, selfId)))
        local.set(c.name, c)
    }

    const mine = new Set<string>()
    for (const [name, peer] of assignments) if (peer === selfId) mine.add(name)

    // Start and update what is assigned here.
    for (const name of mine) {
      const parsed = parseReplicaName(name)
      const w = parsed && workloads.get(parsed.workload)
      if (!parsed || !w) continue
      this.#unassignedSince.delete(name)
      if (this.#ops.has(name)) continue
      const hash = specHash(w)
      if (grace && w.exclusive && !view.majority) continue
      const running = local.get(name)
      if (!running) {
        this.#startReplica(w, parsed.index, hash, view.self.arch, now)
        continue
      }
      const own = store.get(`${STATUS}${selfId}/${name}`)?.value as StatusValue | undefined
      const runningHash = own?.spec ?? hash // a container without a status (a crash) is adopted as it is
      if (running.state === 'failed') {
        // The runtime could not make it (network, cgroups): remove it and start afresh, at most every 5 s.
        const since = this.#failedSince.get(name) ?? now
        this.#failedSince.set(name, since)
        this.#writeStatus(name, w, parsed.index, runningHash, running)
        if (now - since >= FAILED_RETRY_MS) {
          this.#failedSince.delete(name)
          this.#log.warn(
            { container: name, err: running.error },
            'a replica failed to start; making it again',
          )
          this.#run(name, () => this.#init.runtime?.remove(name) ?? Promise.resolve())
        }
        continue
      }
      this.#failedSince.delete(name)
      if (runningHash !== hash) {
        const reports: ReplicaReport[] = []
        for (let i = 0; i < w.replicas; i++) {
          const n = replicaName(w.name, i)
          const owner = assignments.get(n)
          if (!owner) continue // unplaced (no room, no matching node): it cannot hold the update up
          const s = statusOn(n, owner)
          reports.push({ index: i, spec: s?.spec ?? null, available: s?.state === 'running' && s.healthy })
        }
        if (chooseUpdate(reports, hash) === parsed.index)
          this.#replaceReplica(w, parsed.index, hash, view.self.arch)
        else this.#writeStatus(name, w, parsed.index, runningHash, running)
        continue
      }
      this.#writeStatus(name, w, parsed.index, hash, running)
    }

    // Stop what is no longer assigned here.
    for (const [name, c] of local) {
      if (mine.has(name) || this.#ops.has(name)) continue
      const parsed = parseReplicaName(name)
      const w = parsed && workloads.get(parsed.workload)
      const wanted = w && !w.stopped && parsed.index < w.replicas
      if (!wanted) {
        this.#stopReplica(name, 'its workload no longer wants it')
        continue
      }
      const own = store.get(`${STATUS}${selfId}/${name}`)?.value as StatusValue | undefined
      this.#writeStatus(name, w, parsed.index, own?.spec ?? specHash(w), c)
      if (grace) continue
      const since = this.#unassignedSince.get(name) ?? now
      this.#unassignedSince.set(name, since)
      const owner = assignments.get(name)
      const handedOver = owner !== undefined && statusOn(name, owner)?.state === 'running'
      const waited = now - since
      if (
        (handedOver && viewSettled && waited >= (this.#init.stopDelayMs ?? 1_000)) ||
        waited >= (this.#init.handoverTimeoutMs ?? 10_000) ||
        owner === undefined
      )
        this.#stopReplica(
          name,
          owner === undefined ? 'no node of this view may run it' : 'placed on another node',
        )
    }
    for (const name of this.#unassignedSince.keys()) if (!local.has(name)) this.#unassignedSince.delete(name)
    for (const name of this.#failedSince.keys()) if (!local.has(name)) this.#failedSince.delete(name)

    // A status of ours for a container this node does not run (or no longer wants) goes.
    for (const r of store.list(`${STATUS}${selfId}/`)) {
      const name = r.key.slice(`${STATUS}${selfId}/`.length)
      if (local.has(name) || this.#ops.has(name)) continue
      if (mine.has(name) && this.#pending.has(name)) continue
      this.#deleteStatus(name)
    }
    for (const name of this.#pending.keys()) if (!mine.has(name)) this.#pending.delete(name)
  }

  #run(name: string, op: () => Promise<void>): void {
    const p = op()
      .catch((err) => {
        this.#stats.failures++
        this.#log.error({ container: name, err: errorMessage(err) }, 'a replica operation failed')
      })
      .finally(() => {
        this.#ops.delete(name)
        this.#schedule()
      })
    this.#ops.set(name, p)
  }

  #startReplica(w: WorkloadValue, index: number, hash: string, arch: string, now: number): void {
    const name = replicaName(w.name, index)
    const { runtime, artifacts } = this.#init
    const pending = this.#pending.get(name)
    if (pending && pending.retryAt > now) {
      this.#putStatus(name, this.#statusValue(w, index, hash, undefined, pending.state, pending.reason))
      return
    }
    const wait = (state: Pending['state'], reason: string, retryMs: number) => {
      this.#pending.set(name, { state, reason, retryAt: this.#now() + retryMs })
      this.#putStatus(name, this.#statusValue(w, index, hash, undefined, state, reason))
    }
    if (!runtime) {
      wait('waiting', 'this node runs no container runtime (km1s agent --runtime)', 60_000)
      return
    }
    if (w.artifact && !artifacts) {
      // Seam: the artifacts branch passes its Artifacts instance to the scheduler (contracts.md).
      wait(
        'waiting',
        `artifact ${w.artifact} cannot be fetched: this agent has no artifacts subsystem`,
        60_000,
      )
      return
    }
    this.#run(name, async () => {
      let artifactDir: string | undefined
      if (w.artifact && artifacts) {
        this.#putStatus(
          name,
          this.#statusValue(w, index, hash, undefined, 'pending', `pulling ${w.artifact}`),
        )
        try {
          artifactDir = (await artifacts.ensure(w.artifact, arch)).dir
        } catch (err) {
          wait('waiting', `artifact ${w.artifact}: ${errorMessage(err)}`, ARTIFACT_RETRY_MS)
          return
        }
      }
      this.#pending.delete(name)
      this.#putStatus(name, this.#statusValue(w, index, hash, undefined, 'creating', null))
      this.#log.info({ container: name }, 'starting a replica')
      const c = await runtime.create(containerSpecOf(w, index, artifactDir))
      this.#stats.started++
      this.#writeStatus(name, w, index, hash, c)
    })
  }

  #replaceReplica(w: WorkloadValue, index: number, hash: string, arch: string): void {
    const name = replicaName(w.name, index)
    const runtime = this.#init.runtime
    if (!runtime) return
    this.#log.info({ container: name, spec: hash }, 'rolling update: replacing a replica')
    this.#run(name, async () => {
      this.#putStatus(name, this.#statusValue(w, index, hash, undefined, 'stopping', 'rolling update'))
      await runtime.remove(name)
      this.#stats.replaced++
    })
    // The next pass finds it gone and starts the new version (pulling its artifact first).
    void arch
  }

  #stopReplica(name: string, why: string): void {
    const runtime = this.#init.runtime
    if (!runtime) return
    this.#log.info({ container: name, why }, 'stopping a replica')
    this.#run(name, async () => {
      const own = this.#init.store.get(`${STATUS}${this.#init.selfId}/${name}`)?.value as
        | StatusValue
        | undefined
      if (own) this.#putStatus(name, { ...own, state: 'stopping', reason: why })
      await runtime.remove(name)
      this.#stats.stopped++
      this.#deleteStatus(name)
    })
  }

  #statusValue(
    w: WorkloadValue,
    index: number,
    hash: string,
    c: ContainerStatus | undefined,
    state?: StatusValue['state'],
    reason?: string | null,
  ): StatusValue {
    const name = replicaName(w.name, index)
    const restarts = c ? c.processes.reduce((n, p) => n + p.restarts, 0) : 0
    const down = c?.processes.find((p) => p.state !== 'running' && p.lastExit !== null)
    const s: StatusValue['state'] =
      state ??
      (c === undefined
        ? 'pending'
        : c.state === 'removing'
          ? 'stopping'
          : c.state === 'running' && c.processes.some((p) => p.state !== 'running')
            ? 'degraded'
            : c.state)
    const healthy = s === 'running' && (this.#init.isHealthy?.(name) ?? true)
    return {
      workload: w.name,
      node: this.#init.nodeName(),
      state: s,
      ip: c?.ip ?? null,
      restarts,
      reason:
        (reason !== undefined
          ? reason
          : (c?.error ??
            down?.lastExit?.message ??
            (s === 'running' && !healthy ? 'not passing its health check' : null))
        )?.slice(0, 500) ?? null,
      startedAt: c ? Date.parse(c.createdAt) || null : null,
      index,
      spec: hash,
      healthy,
    }
  }

  #writeStatus(name: string, w: WorkloadValue, index: number, hash: string, c: ContainerStatus): void {
    this.#putStatus(name, this.#statusValue(w, index, hash, c))
  }

  #putStatus(name: string, value: StatusValue): void {
    const key = `${STATUS}${this.#init.selfId}/${name}`
    const current = this.#init.store.get(key)
    const text = canonicalJson(value)
    if (current && canonicalJson(current.value) === text) return
    // A write still being signed is not in the store yet: do not send it twice.
    const last = this.#lastPut.get(key)
    if (last && last.text === text && this.#now() - last.at < 1_000) return
    this.#lastPut.set(key, { text, at: this.#now() })
    this.#init.store.put(key, value).catch((err) => {
      this.#log.warn({ key, err: errorMessage(err) }, 'writing a status record failed')
    })
  }

  #deleteStatus(name: string): void {
    const key = `${STATUS}${this.#init.selfId}/${name}`
    this.#lastPut.delete(key)
    if (!this.#init.store.get(key)) return
    this.#init.store.delete(key).catch((err) => {
      this.#log.warn({ key, err: errorMessage(err) }, 'deleting a status record failed')
    })
  }
}
