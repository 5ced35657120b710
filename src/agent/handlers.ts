// The control API's handlers: thin translations between API types and the subsystems.
import type { Handlers, NodeView, StatusView, StreamHandlers } from '../api/index.ts'
import type { UpgradeHandlers } from '../api/server.ts'
import { operationEvents } from '../artifacts/events.ts'
import type { Artifacts } from '../artifacts/index.ts'
import { Km1sError } from '../common/errors.ts'
import { KM1S_VERSION } from '../common/version.ts'
import type { DnsService } from '../dns/index.ts'
import { type Member, type Membership, resolveNode } from '../membership/index.ts'
import type { Mesh } from '../mesh/index.ts'
import type { NodeNetwork } from '../network/index.ts'
import type { Remote } from '../remote/index.ts'
import { startExec } from '../runtime/exec.ts'
import type { ContainerStatus, Runtime } from '../runtime/types.ts'
import { createWorkloadHandlers, type Unplaced } from '../scheduler/index.ts'
import type { Services } from '../services/index.ts'
import { digestHash, encodeHlc, type Replication, type Store } from '../state/index.ts'

export interface HandlerDeps {
  name: () => string
  dataDir: string
  startedAt: number
  mesh: Mesh
  membership: Membership
  store: Store
  replication: Replication
  /** The node's container runtime; undefined when the agent runs none (the container routes say so). */
  runtime: Runtime | undefined
  /** The node's DNS server; undefined when it runs none. */
  dns?: DnsService
  /** Logs and exec of containers on other nodes; without it they reach only this node's. */
  remote?: Remote
  /** The node network; undefined when the agent runs none. */
  network?: NodeNetwork | undefined
  /** The scheduler, for what it could not place. */
  scheduler?: { unplaced(): Unplaced[] }
  /** Undefined only in tests of other routes. */
  artifacts?: Artifacts
  /** Service records: written with the workload that names them, listed by `km1s services`. */
  services?: Services
}

function labelsOf(store: Store, id: string): Record<string, string> {
  return (store.get(`label/${id}`)?.value as Record<string, string> | undefined) ?? {}
}

export function nodeView(m: Member, store: Store, now: number): NodeView {
  return {
    name: m.info.name,
    id: m.id,
    state: m.state,
    self: m.self,
    addresses: m.info.addresses,
    arch: m.info.arch,
    cpus: m.info.cpus,
    memory: m.info.memory,
    labels: labelsOf(store, m.id),
    version: m.info.version,
    uptime: Math.max(0, Math.round((now - m.info.startedAt) / 1000)),
    lastHeard: m.lastHeard ? Math.max(0, now - m.lastHeard) : -1,
  }
}

/** Applies `set` and `remove` to a label map (pure). */
export function editLabels(
  current: Record<string, string>,
  set: Record<string, string>,
  remove: string[],
): Record<string, string> {
  const next = { ...current, ...set }
  for (const k of remove) delete next[k]
  return next
}

function dnsView(dns: DnsService | undefined): StatusView['dns'] {
  const s = dns?.status()
  if (!s) return null
  const { queries, answered, nxdomain, forwarded, refused, formerr, dropped, rateLimited } = s.stats
  return {
    listening: s.listening.map((l) => `${l.address}:${l.port}`),
    missing: s.missing,
    upstreams: s.upstreams.map((u) => `${u.address}:${u.port}`),
    names: s.zone.names,
    ...{ queries, answered, nxdomain, forwarded, refused, formerr, dropped, rateLimited },
  }
}

export function createHandlers(d: HandlerDeps): {
  handlers: Handlers
  streams: StreamHandlers
  upgrades: UpgradeHandlers
} {
  const { mesh, membership, store, replication } = d
  const runtime = (): Runtime => {
    if (d.runtime) return d.runtime
    throw new Km1sError(
      'ERR_NO_RUNTIME',
      "This agent runs no container runtime; run 'km1s doctor' to see what this host lacks, then restart the agent.",
    )
  }
  // A container this node does not run goes to the node that does (remote/), when there is one to ask.
  const elsewhere = (name: string): Remote | undefined =>
    d.remote !== undefined && d.runtime?.get(name) === undefined ? d.remote : undefined
  const container = (name: string, process?: string): ContainerStatus => {
    const found = runtime().get(name)
    if (!found)
      throw new Km1sError(
        'ERR_NOT_FOUND',
        `There is no container named ${name} on this node; 'km1s containers' lists them.`,
      )
    if (process !== undefined && !found.processes.some((p) => p.name === process))
      throw new Km1sError(
        'ERR_NOT_FOUND',
        `Container ${name} has no process named ${process}; it has ${found.processes.map((p) => p.name).join(', ')}.`,
      )
    return found
  }
  const artifacts = (): Artifacts => {
    if (d.artifacts) return d.artifacts
    throw new Km1sError('ERR_NO_ARTIFACTS', 'This agent runs no artifact store; restart the agent.')
  }
  const handlers: Handlers = {
    health: () => ({ ok: true, name: d.name(), id: mesh.peerId.toString(), pid: process.pid }),
    nodes: () => {
      const now = Date.now()
      return membership.members().map((m) => nodeView(m, store, now))
    },
    status: async (): Promise<StatusView> => {
      const network = await d.network?.status()
      const counts = { alive: 0, suspect: 0, dead: 0 }
      for (const m of membership.members()) counts[m.state]++
      const mem = process.memoryUsage()
      const s = store.stats()
      return {
        name: d.name(),
        id: mesh.peerId.toString(),
        cluster: mesh.clusterId,
        version: KM1S_VERSION,
        pid: process.pid,
        dataDir: d.dataDir,
        uptime: Math.round((Date.now() - d.startedAt) / 1000),
        addresses: mesh.addresses(),
        nodes: counts,
        mesh: mesh.stats(),
        membership: membership.stats(),
        state: {
          ...s,
          digest: digestHash(store.digest()).toString('hex'),
          ...replication.stats(),
        },
        memory: {
          rss: mem.rss,
          heapUsed: mem.heapUsed,
          heapTotal: mem.heapTotal,
          external: mem.external,
          arrayBuffers: mem.arrayBuffers,
        },
        dns: dnsView(d.dns),
        remote: d.remote?.stats() ?? { served: 0, asked: 0, badFrames: 0, failures: 0, open: 0 },
        ...(network ? { network } : {}),
      }
    },
    label: async (req) => {
      const member = resolveNode(membership.members(), req.node)
      const labels = editLabels(labelsOf(store, member.id), req.set, req.remove)
      // A user write: on disk before the API answers.
      await store.put(`label/${member.id}`, labels, { durable: true })
      return nodeView(member, store, Date.now())
    },
    forget: async (req) => {
      // Also the nodes hidden after --forget-after: their records are still there to remove.
      const member = resolveNode(membership.members({ includeForgotten: true }), req.node)
      await membership.forget(member.id)
      return { id: member.id, name: member.info.name }
    },
    containers: () => runtime().list(),
    clusterContainers: async (req) => {
      if (req.container !== undefined) {
        const remote = elsewhere(req.container)
        if (remote) return [await remote.locate(req.container)]
        const found = container(req.container)
        return [{ node: d.name(), id: mesh.peerId.toString(), containers: [found], error: null }]
      }
      const members = membership.members()
      const only = req.node === undefined ? undefined : resolveNode(members, req.node)
      if (d.remote) return d.remote.containers(only)
      return members
        .filter((m) => m.self && (only === undefined || only.self))
        .map((m) => ({ node: m.info.name, id: m.id, containers: d.runtime?.list() ?? [], error: null }))
    },
    containerCreate: (spec) => runtime().create(spec),
    containerRemove: async (req) => {
      container(req.name)
      await runtime().remove(req.name)
      return {}
    },
    // Workloads (scheduler/): run, apply, get, scale, stop, rm, ps.
    ...createWorkloadHandlers({
      store,
      membership,
      scheduler: d.scheduler,
      // The service follows its workload before the API answers: `km1s services` shows it at once.
      afterWrite: () => d.services?.reconcile(true),
    }),
    services: () => (d.services?.list() ?? []).map((s) => ({ ...s, healthy: s.endpoints.length })),
    artifacts: () => artifacts().list(),
    artifactsStatus: () => artifacts().stats(),
    artifactRemove: (req) => artifacts().remove(req.ref, req.arch),
    artifactGc: () => artifacts().gc(),
  }
  const streams: StreamHandlers = {
    watch: async function* (req, signal) {
      for await (const c of store.watch(req.prefix, signal)) {
        yield {
          key: c.key,
          hlc: encodeHlc(c.record.hlc),
          author: c.record.author,
          deleted: c.record.deleted,
          origin: c.origin,
          at: c.at,
        }
      }
    },
    // Checked before the answer's headers go out, so an unknown container is a plain 404.
    logs: (req, signal) => {
      const remote = elsewhere(req.container)
      if (remote) return remote.logs(req, signal)
      container(req.container, req.process)
      const { container: name, ...query } = req
      return runtime().logs(name, { ...query, signal })
    },
    push: (req, signal) =>
      operationEvents((onProgress) =>
        artifacts().push(req.path, req.name, { arch: req.arch, signal, onProgress }),
      ),
    pull: (req, signal) =>
      operationEvents((onProgress) =>
        artifacts().pull(req.ref, { arch: req.arch, checkout: req.checkout, signal, onProgress }),
      ),
  }
  const upgrades: UpgradeHandlers = {
    exec: async (req, log) => {
      const remote = elsewhere(req.container)
      if (remote) return remote.exec(req)
      container(req.container, req.process)
      const { cols, rows, ...request } = req
      const prepared = await runtime().prepareExec(request)
      return startExec(prepared, { tty: req.tty, cols, rows, log: log.child({ exec: req.container }) })
    },
  }
  return { handlers, streams, upgrades }
}
