// The workload: what a user asks to run (from `km1s run` flags or a YAML manifest), its stored form in
// `workload/<name>` records, and the replica containers it becomes. Validation lives here, at the boundary:
// every error names the field and what is allowed. The YAML side is manifest.ts: the agent needs none of it.
import { createHash } from 'node:crypto'
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import { type ContainerSpecInput, RestartPolicy } from '../runtime/types.ts'
import {
  Arch,
  ArtifactRef,
  Command,
  canonicalJson,
  Env,
  type HealthValue,
  MAX_REPLICAS,
  MIN_WORKLOAD_MEMORY,
  Port,
  Replicas,
  ServiceName,
  WorkloadLabels,
  WorkloadName,
  WorkloadValue,
} from '../state/record.ts'

export { MAX_REPLICAS, WorkloadValue }

/** Replica containers are `<workload>-<index>` and container names hold at most 40 characters. */
export const DEFAULT_MEMORY = 128 * 1024 * 1024
const MIN_MEMORY = MIN_WORKLOAD_MEMORY
/** The label that overrides a node's architecture for placement (`km1s label n2 km1s.io/arch=arm64`). */
export const ARCH_LABEL = 'km1s.io/arch'

const CPU_TEXT = /^(\d+(?:\.\d+)?)(m?)$/
const MEMORY_TEXT = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G|k)?$/
const MEMORY_UNITS: Record<string, number> = {
  '': 1,
  k: 1e3,
  K: 1e3,
  M: 1e6,
  G: 1e9,
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
}

/** CPU as cores (0.5, "0.5") or millicores ("500m") → millicores; undefined when it is not one. */
export function parseCpu(input: string | number): number | undefined {
  const m = CPU_TEXT.exec(String(input).trim())
  if (!m) return undefined
  const n = Number(m[1])
  const milli = m[2] === 'm' ? n : n * 1000
  return Number.isFinite(milli) && Number.isInteger(Math.round(milli)) ? Math.round(milli) : undefined
}

/** Memory as bytes (67108864) or with a unit ("64Mi", "100M") → bytes. */
export function parseMemory(input: string | number): number | undefined {
  const m = MEMORY_TEXT.exec(String(input).trim())
  if (!m) return undefined
  const n = Math.round(Number(m[1]) * (MEMORY_UNITS[m[2] ?? ''] ?? 1))
  return Number.isSafeInteger(n) ? n : undefined
}

export function formatCpu(milli: number): string {
  return milli % 1000 === 0 ? String(milli / 1000) : `${milli}m`
}

export function formatMemory(bytes: number): string {
  for (const [unit, size] of [
    ['Gi', 1024 ** 3],
    ['Mi', 1024 ** 2],
    ['Ki', 1024],
  ] as const) {
    if (bytes % size === 0) return `${bytes / size}${unit}`
  }
  return String(bytes)
}

const Quantity = z.union([z.number(), z.string()])
const Count = (max: number, min = 1) =>
  z
    .number()
    .check(
      z.int(`must be a whole number ${min} to ${max}`),
      z.minimum(min, `must be ${min} to ${max}`),
      z.maximum(max, `must be ${min} to ${max}`),
    )

/** A health check as a user writes it: exactly one of tcp, http, exec; durations as 2s, 500ms or ms. */
export const HealthManifest = z.strictObject({
  tcp: z.optional(z.union([Port, z.literal(true)])),
  http: z.optional(z.string()),
  exec: z.optional(Command),
  port: z.optional(Port),
  interval: z.optional(Quantity),
  timeout: z.optional(Quantity),
  healthyAfter: z.optional(Count(100)),
  unhealthyAfter: z.optional(Count(100)),
  restartAfter: z.optional(Count(1000, 0)),
})
export type HealthManifest = z.input<typeof HealthManifest>

export const DEFAULT_HEALTH = {
  intervalMs: 2_000,
  timeoutMs: 1_000,
  healthyAfter: 1,
  unhealthyAfter: 1,
  restartAfter: 3,
}

/** A duration as ms: 1500, "1500ms", "2s", "1m"; undefined when it is not one. */
export function parseDuration(input: string | number): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(String(input).trim())
  if (!m) return undefined
  const n = Number(m[1]) * (m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 1)
  return Number.isFinite(n) ? Math.round(n) : undefined
}

export function formatDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`
}

function normalizeHealth(h: z.infer<typeof HealthManifest>, ports: number[], where: string): HealthValue {
  const kinds = (['tcp', 'http', 'exec'] as const).filter((k) => h[k] !== undefined)
  if (kinds.length !== 1) throw invalid(where, 'health', 'must have exactly one of tcp, http or exec')
  const kind = kinds[0] as HealthValue['kind']
  const out: HealthValue = { kind, ...DEFAULT_HEALTH }
  const dur = (field: 'interval' | 'timeout', min: number, max: number): number | undefined => {
    const v = h[field]
    if (v === undefined) return undefined
    const ms = parseDuration(v)
    if (ms === undefined || ms < min || ms > max)
      throw invalid(
        where,
        `health.${field}`,
        `must be a duration from ${formatDuration(min)} to ${formatDuration(max)}, such as 2s or 500ms`,
      )
    return ms
  }
  out.intervalMs = dur('interval', 100, 3_600_000) ?? out.intervalMs
  out.timeoutMs = dur('timeout', 10, 600_000) ?? Math.min(out.timeoutMs, out.intervalMs)
  if (h.healthyAfter !== undefined) out.healthyAfter = h.healthyAfter
  if (h.unhealthyAfter !== undefined) out.unhealthyAfter = h.unhealthyAfter
  if (h.restartAfter !== undefined) out.restartAfter = h.restartAfter
  if (kind === 'exec') {
    if (h.port !== undefined) throw invalid(where, 'health.port', 'is only for tcp and http checks')
    out.command = h.exec as string[]
    return out
  }
  const port = (typeof h.tcp === 'number' ? h.tcp : undefined) ?? h.port ?? ports[0]
  if (port === undefined)
    throw invalid(where, 'health.port', 'is needed: the workload has no port (add --port or health.port)')
  out.port = port
  if (kind === 'http') {
    const path = h.http as string
    if (!/^\/[\x21-\x7e]{0,255}$/.test(path))
      throw invalid(where, 'health.http', 'must be a path such as /healthz')
    out.path = path
  }
  return out
}

function manifestHealth(h: HealthValue): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  if (h.kind === 'http') out.http = h.path
  else if (h.kind === 'tcp') out.tcp = true
  else out.exec = h.command
  if (h.port !== undefined) out.port = h.port
  out.interval = formatDuration(h.intervalMs)
  out.timeout = formatDuration(h.timeoutMs)
  out.healthyAfter = h.healthyAfter
  out.unhealthyAfter = h.unhealthyAfter
  out.restartAfter = h.restartAfter
  return out
}

/** What a user writes: a manifest document or the `km1s run` flags. Only name and command are required. */
export const WorkloadManifest = z.strictObject({
  kind: z.optional(z.literal('Workload', 'must be Workload')),
  name: WorkloadName,
  artifact: z.optional(z.nullable(ArtifactRef)),
  command: Command,
  replicas: z.optional(Replicas),
  cpu: z.optional(z.nullable(Quantity)),
  memory: z.optional(z.nullable(Quantity)),
  arch: z.optional(z.nullable(Arch)),
  labels: z.optional(WorkloadLabels),
  ports: z.optional(z.array(Port).check(z.maxLength(16, 'may have at most 16 ports'))),
  service: z.optional(z.nullable(ServiceName)),
  headless: z.optional(z.boolean()),
  health: z.optional(z.nullable(HealthManifest)),
  restart: z.optional(RestartPolicy),
  env: z.optional(Env),
  exclusive: z.optional(z.boolean()),
  stopped: z.optional(z.boolean()),
})
export type WorkloadManifest = z.input<typeof WorkloadManifest>

function invalid(where: string, field: string, why: string): Km1sError {
  return new Km1sError('ERR_INVALID', `${where}: ${field} ${why.replace(/\.$/, '')}.`)
}

/** The first zod issue as "field why". */
function issueText(error: z.core.$ZodError): { field: string; why: string } {
  const issue = error.issues[0]
  const field = issue && issue.path.length > 0 ? issue.path.map(String).join('.') : 'the document'
  let why = issue?.message ?? 'is invalid'
  if (issue?.code === 'unrecognized_keys')
    return {
      field: (issue as { keys: string[] }).keys
        .map((k) => [...issue.path.map(String), k].join('.'))
        .join(', '),
      why:
        issue.path.length > 0
          ? `is not a ${issue.path.map(String).join('.')} field (allowed: tcp, http, exec, port, interval, timeout, healthyAfter, unhealthyAfter, restartAfter)`
          : 'is not a workload field (allowed: name, artifact, command, replicas, cpu, memory, arch, labels, ports, service, headless, health, restart, env, exclusive)',
    }
  if (issue?.code === 'invalid_value' && issue.path.at(-1) === 'restart')
    why = 'must be always, on-failure or never'
  else if (/^Invalid input: expected/.test(why)) why = why.replace(/^Invalid input: expected/, 'must be')
  return { field, why }
}

/** Validates a manifest (or run flags) and returns the stored form; errors say `where: field why`. */
export function normalizeWorkload(input: unknown, where = 'Invalid workload'): WorkloadValue {
  const parsed = WorkloadManifest.safeParse(input)
  if (!parsed.success) {
    const { field, why } = issueText(parsed.error)
    throw invalid(where, field, why)
  }
  const m = parsed.data
  const cpu = m.cpu === undefined || m.cpu === null ? 0 : parseCpu(m.cpu)
  if (cpu === undefined || cpu > 4_096_000)
    throw invalid(where, 'cpu', 'must be cores (0.5) or millicores (500m)')
  if (cpu !== 0 && cpu < 10) throw invalid(where, 'cpu', 'must be at least 10m (0.01 cores)')
  const memory = m.memory === undefined || m.memory === null ? DEFAULT_MEMORY : parseMemory(m.memory)
  if (memory === undefined) throw invalid(where, 'memory', 'must be bytes or a size such as 64Mi or 1Gi')
  if (memory < MIN_MEMORY) throw invalid(where, 'memory', 'must be at least 4Mi')
  const ports = m.ports ?? []
  const health = m.health ? normalizeHealth(m.health, ports, where) : undefined
  if (m.headless && !m.service) throw invalid(where, 'headless', 'needs a service (--service NAME)')
  return {
    name: m.name,
    artifact: m.artifact ?? null,
    command: m.command,
    replicas: m.replicas ?? 1,
    cpu,
    memory,
    arch: m.arch ?? null,
    labels: m.labels ?? {},
    ports,
    service: m.service ?? null,
    ...(health ? { health } : {}),
    ...(m.headless ? { headless: true as const } : {}),
    restart: m.restart ?? 'always',
    env: m.env ?? {},
    exclusive: m.exclusive ?? false,
    stopped: m.stopped ?? false,
  }
}

/** The manifest a user would write for a stored workload: `get -o yaml` prints it, `apply` reads it back. */
export function toManifest(w: WorkloadValue): Record<string, unknown> {
  const out: Record<string, unknown> = { kind: 'Workload', name: w.name }
  if (w.artifact !== null) out.artifact = w.artifact
  out.command = w.command
  out.replicas = w.replicas
  if (w.cpu !== 0) out.cpu = formatCpu(w.cpu)
  out.memory = formatMemory(w.memory)
  if (w.arch !== null) out.arch = w.arch
  if (Object.keys(w.labels).length > 0) out.labels = w.labels
  if (w.ports.length > 0) out.ports = w.ports
  if (w.service !== null) out.service = w.service
  if (w.headless) out.headless = true
  if (w.health) out.health = manifestHealth(w.health)
  out.restart = w.restart
  if (Object.keys(w.env).length > 0) out.env = w.env
  if (w.exclusive) out.exclusive = true
  if (w.stopped) out.stopped = true
  return out
}

/** What a replica runs: everything but the count. Two replicas of equal hash need no update. */
export function specHash(w: WorkloadValue): string {
  const { replicas: _r, stopped: _s, ...spec } = w
  return createHash('sha256').update(canonicalJson(spec)).digest('hex').slice(0, 12)
}

export function replicaName(workload: string, index: number): string {
  return `${workload}-${index}`
}

/** The workload and index of a replica container name, or undefined for another container. */
export function parseReplicaName(container: string): { workload: string; index: number } | undefined {
  const m = /^(.+)-(0|[1-9][0-9]{0,2})$/.exec(container)
  if (!m) return undefined
  return { workload: m[1] as string, index: Number(m[2]) }
}

/** The runtime spec of replica `index`; `artifactDir` is where the artifact's files are, when there is one. */
export function containerSpecOf(w: WorkloadValue, index: number, artifactDir?: string): ContainerSpecInput {
  return {
    name: replicaName(w.name, index),
    ...(artifactDir ? { artifactDir } : {}),
    processes: [
      {
        name: 'main',
        args: w.command,
        env: { ...w.env, KM1S_WORKLOAD: w.name, KM1S_REPLICA: String(index) },
        cwd: artifactDir ? '/app' : '/',
        restart: w.restart,
        limits: {
          memoryBytes: w.memory,
          ...(w.cpu > 0 ? { cpuMillicores: w.cpu } : {}),
          pids: 256,
        },
      },
    ],
  }
}
