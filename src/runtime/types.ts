// The runtime's interface: what the agent (and later the scheduler) asks of it, whichever runtime runs the
// containers — `oci` (crun/runc, isolated) or `process` (plain supervised processes, nothing isolated).
// Specs are validated here, at the boundary, with the one schema library; everything inside trusts them.
import * as z from '../common/schema.ts'
import { MIN_CPU_MILLICORES, MIN_MEMORY_BYTES, NAME_PATTERN } from './oci.ts'

const NAME_RULE = 'lowercase letters, digits and dashes, at most 63, not starting or ending with a dash'
/** Container names become parts of cgroup paths, OCI ids and DNS names: a DNS label, at most 40 here. */
export const ContainerName = z
  .string()
  .check(z.regex(NAME_PATTERN, `must be ${NAME_RULE}`), z.maxLength(40, 'must be at most 40 characters'))
export const ProcessName = z
  .string()
  .check(z.regex(NAME_PATTERN, `must be ${NAME_RULE}`), z.maxLength(40, 'must be at most 40 characters'))

export const RestartPolicy = z.enum(['always', 'on-failure', 'never'])
export type RestartPolicy = z.infer<typeof RestartPolicy>

const noNul = z.string().check(z.refine((s) => !s.includes('\0'), 'must not contain a NUL byte'))

export const ProcessSpec = z.strictObject({
  name: ProcessName,
  args: z.array(noNul).check(z.minLength(1, 'must name the program to run'), z.maxLength(256)),
  env: z._default(
    z.record(
      z.string().check(z.regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'names must be letters, digits and underscores')),
      noNul,
    ),
    {},
  ),
  cwd: z._default(z.string().check(z.regex(/^\//, 'must be an absolute path')), '/'),
  user: z.optional(
    z.strictObject({
      uid: z.number().check(z.int(), z.minimum(0), z.maximum(0xfffffffe)),
      gid: z.number().check(z.int(), z.minimum(0), z.maximum(0xfffffffe)),
    }),
  ),
  restart: z._default(RestartPolicy, 'always'),
  /** Between TERM and KILL when the process is stopped. */
  stopGraceMs: z._default(z.number().check(z.int(), z.minimum(0), z.maximum(600_000)), 5_000),
  limits: z._default(
    z.strictObject({
      memoryBytes: z._default(
        z.number().check(z.int(), z.minimum(MIN_MEMORY_BYTES, 'must be at least 4 MiB (4194304 bytes)')),
        128 * 1024 * 1024,
      ),
      cpuMillicores: z.optional(
        z.number().check(z.int(), z.minimum(MIN_CPU_MILLICORES, 'must be at least 10 millicores')),
      ),
      pids: z._default(z.number().check(z.int(), z.minimum(1, 'must be at least 1')), 256),
    }),
    { memoryBytes: 128 * 1024 * 1024, pids: 256 },
  ),
})
export type ProcessSpecInput = z.input<typeof ProcessSpec>
export type ProcessSpec = z.output<typeof ProcessSpec>

export const ContainerSpec = z
  .strictObject({
    name: ContainerName,
    /** Defaults to the container's name. */
    hostname: z.optional(z.string().check(z.regex(NAME_PATTERN, `must be ${NAME_RULE}`))),
    /** Bound read-only at /app (oci) or the working directory's base (process). */
    artifactDir: z.optional(z.string().check(z.regex(/^\//, 'must be an absolute path'))),
    processes: z.array(ProcessSpec).check(z.minLength(1, 'must have at least one process'), z.maxLength(16)),
  })
  .check(
    z.refine(
      (spec) => new Set(spec.processes.map((p) => p.name)).size === spec.processes.length,
      'process names must be unique within a container',
    ),
  )
export type ContainerSpecInput = z.input<typeof ContainerSpec>
export type ContainerSpec = z.output<typeof ContainerSpec>

/** Why a process is not running. */
export type ExitReason =
  | 'exited' // ended by itself, with `code`
  | 'signal' // killed by `signal`, not by km1s
  | 'oom-killed' // the kernel killed it for exceeding its memory limit
  | 'not-found' // args[0] does not exist
  | 'not-executable' // args[0] exists but may not be executed
  | 'exec-format' // args[0] is a binary for another CPU, or not a program (ENOEXEC)
  | 'start-failed' // the runtime could not start it; `message` says why
  | 'stopped' // km1s stopped it (remove, or the agent told it to)

export interface ExitInfo {
  reason: ExitReason
  code: number | null
  signal: string | null
  /** One sentence for people: "exited with code 3", "killed: out of memory (limit 16 MiB)". */
  message: string
  /** ISO time. */
  at: string
}

export type ProcessState = 'starting' | 'running' | 'backoff' | 'exited' | 'stopping'

export interface ProcessStatus {
  name: string
  state: ProcessState
  pid: number | null
  restarts: number
  lastExit: ExitInfo | null
  /** ISO time of the next start while in back-off. */
  nextStartAt: string | null
}

export type ContainerState = 'creating' | 'running' | 'degraded' | 'exited' | 'removing' | 'failed'

export interface ContainerStatus {
  name: string
  state: ContainerState
  /** The container's address on the node bridge; null for the process runtime. */
  ip: string | null
  processes: ProcessStatus[]
  /** Set when the container itself (not one process) could not be made: one sentence. */
  error: string | null
  createdAt: string
}

export interface LogQuery {
  process?: string
  /** Only entries at or after this time (ms since the epoch). */
  sinceMs?: number
  /** At most this many of the newest entries before following. */
  tail?: number
  follow?: boolean
  signal?: AbortSignal
}

export interface LogEntry {
  /** ISO time with nanoseconds as in the CRI log format. */
  time: string
  process: string
  stream: 'stdout' | 'stderr'
  line: string
}

export interface ExecRequest {
  container: string
  args: string[]
  tty: boolean
  /** Whose user, environment, working directory and limits the command takes; default the first process. */
  process?: string
  env?: Record<string, string>
}

/** What exec.ts spawns: the argv runs the command in the container; pidFile, if set, gets its pid. */
export interface PreparedExec {
  argv: string[]
  env: Record<string, string>
  cwd: string
  pidFile: string | null
  cleanup(): Promise<void>
}

export interface Runtime {
  readonly kind: 'oci' | 'process'
  /** Adopts the containers it knows, removes every km1s resource of this node that nothing wants. */
  start(): Promise<void>
  /** Stops supervising; containers keep running (the next start adopts them). */
  stop(): Promise<void>
  /** Creates and starts a container; resolves once every process was started (or failed to). */
  create(spec: ContainerSpecInput): Promise<ContainerStatus>
  /** Stops every process (TERM, grace, KILL) and removes everything the container had. */
  remove(name: string): Promise<void>
  list(): ContainerStatus[]
  get(name: string): ContainerStatus | undefined
  logs(name: string, query: LogQuery): AsyncIterable<LogEntry>
  prepareExec(req: ExecRequest): Promise<PreparedExec>
  /**
   * Moves the node to another container subnet (network/ lost a subnet conflict): the bridge and every
   * container get an address of the new one, keeping their host part where free; processes keep running.
   */
  setSubnet?(cidr: string): Promise<void>
  /** Calls `listener` when a container or one of its processes changes state; returns the unsubscribe. */
  onChange(listener: (status: ContainerStatus) => void): () => void
}

/** The agent's `--runtime` choices: `auto` is oci where this host allows it, else process. */
export type RuntimeChoice = 'auto' | 'oci' | 'process' | 'none'
export const RUNTIME_CHOICES: readonly RuntimeChoice[] = ['auto', 'oci', 'process', 'none']
