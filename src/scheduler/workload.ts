// The workload: what a user asks to run (from `km1s run` flags or a YAML manifest), its stored form in
// `workload/<name>` records, and the replica containers it becomes. Validation lives here, at the boundary:
// every error names the field and what is allowed.
import { createHash } from 'node:crypto'
import { parseAllDocuments, stringify } from 'yaml'
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'
import { type ContainerSpecInput, RestartPolicy } from '../runtime/types.ts'
import {
  Arch,
  ArtifactRef,
  Command,
  canonicalJson,
  Env,
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
      field: (issue as { keys: string[] }).keys.join(', '),
      why: 'is not a workload field (allowed: name, artifact, command, replicas, cpu, memory, arch, labels, ports, service, restart, env, exclusive)',
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
  return {
    name: m.name,
    artifact: m.artifact ?? null,
    command: m.command,
    replicas: m.replicas ?? 1,
    cpu,
    memory,
    arch: m.arch ?? null,
    labels: m.labels ?? {},
    ports: m.ports ?? [],
    service: m.service ?? null,
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
  out.restart = w.restart
  if (Object.keys(w.env).length > 0) out.env = w.env
  if (w.exclusive) out.exclusive = true
  if (w.stopped) out.stopped = true
  return out
}

/** Several workloads as one YAML stream, one document each. */
export function workloadsToYaml(ws: WorkloadValue[]): string {
  return ws.map((w) => stringify(toManifest(w))).join('---\n')
}

/** Every document of a YAML (or JSON) file, validated; the first bad one throws, naming file, document, field. */
export function parseManifests(text: string, file: string): WorkloadValue[] {
  const docs = parseAllDocuments(text, { prettyErrors: false })
  const list = Array.isArray(docs) ? docs : [docs]
  const out: WorkloadValue[] = []
  const names = new Set<string>()
  list.forEach((doc, i) => {
    const where = list.length > 1 ? `${file} document ${i + 1}` : file
    const err = doc.errors[0]
    if (err) throw new Km1sError('ERR_INVALID', `${where} is not valid YAML: ${err.message.split('\n')[0]}.`)
    const value = doc.toJS() as unknown
    if (value === null || value === undefined) return // an empty document (a trailing ---)
    if (typeof value !== 'object' || Array.isArray(value))
      throw new Km1sError('ERR_INVALID', `${where}: a workload is a mapping of fields (name, command, …).`)
    const w = normalizeWorkload(value, where)
    if (names.has(w.name))
      throw new Km1sError(
        'ERR_INVALID',
        `${where}: name ${w.name} appears twice in ${file}; give each a new name.`,
      )
    names.add(w.name)
    out.push(w)
  })
  if (out.length === 0)
    throw new Km1sError('ERR_INVALID', `${file} holds no workload; write at least a name and a command.`)
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
