// Pure: the OCI runtime-spec config.json for one process of a km1s container, and the small files it binds.
// No I/O here: the caller decides which host paths exist and writes the rendered files (docs/runtime.md).
import { isAbsolute, normalize } from 'node:path'
import { Km1sError } from '../common/errors.ts'
import * as z from '../common/schema.ts'

export const OCI_VERSION = '1.0.2'
/** The unprivileged default user (nobody/nogroup on Debian). */
export const DEFAULT_UID = 65534
export const DEFAULT_GID = 65534
export const MIN_MEMORY_BYTES = 4 * 1024 * 1024
/** CFS period; a quota below 1 ms is refused by the kernel, hence at least 10 millicores. */
export const CPU_PERIOD_US = 100_000
export const MIN_CPU_MILLICORES = 10
export const DEFAULT_TMP_BYTES = 64 * 1024 * 1024
export const DEFAULT_NOFILE = 4096
export const DEFAULT_PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/**
 * Host paths bound read-only into every container. Not all exist everywhere (/lib64 on arm): callers pass
 * the present ones (`presentSystemPaths` in host.ts). /etc/ssl/certs lets TLS clients verify servers.
 */
export const DEFAULT_SYSTEM_PATHS: readonly string[] = [
  '/usr',
  '/bin',
  '/sbin',
  '/lib',
  '/lib64',
  '/etc/ssl/certs',
  '/etc/ld.so.cache',
  '/etc/alternatives',
]

/**
 * Capabilities a spec may ask for. The default is none: processes run as an unprivileged user with no new
 * privileges, and nothing km1s runs needs more. Binding a port below 1024 is the one common exception.
 */
export const ALLOWED_CAPABILITIES = ['CAP_NET_BIND_SERVICE'] as const

// runc's defaults (libcontainer/specconv/example.go): kernel interfaces a container must not read or write.
export const MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
]
export const READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
]

// Destinations km1s mounts itself; a system path may not shadow them.
const RESERVED_DESTINATIONS = new Set([
  '/proc',
  '/dev',
  '/sys',
  '/tmp',
  '/app',
  '/etc/hosts',
  '/etc/hostname',
  '/etc/resolv.conf',
])

/** A DNS label: it becomes `<container>.ctr.km1s.internal` and part of cgroup and OCI ids. */
export const NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
const NAME_RULE = 'lowercase letters, digits and dashes, at most 63, not starting or ending with a dash'

/** `/usr/./lib/` and `/usr/lib` are one destination: compare and mount them as the latter. */
function canonicalPath(path: string): string {
  const normal = normalize(path)
  return normal.length > 1 ? normal.replace(/\/+$/, '') : normal
}

const absolutePath = z.pipe(
  z.string().check(z.refine((p) => isAbsolute(p) && !p.includes('\0'), 'must be an absolute path')),
  z.transform(canonicalPath),
)

const namespaceSource = z.pipe(
  z
    .string()
    .check(
      z.refine(
        (p) => p === 'new' || (isAbsolute(p) && !p.includes('\0')),
        "must be an absolute path or 'new'",
      ),
    ),
  z.transform((p: string) => (p === 'new' ? p : canonicalPath(p))),
)

const envName = /^[A-Za-z_][A-Za-z0-9_]*$/

export const containerProcessSpecSchema = z
  .object({
    container: z.string().check(z.regex(NAME_PATTERN, `must be ${NAME_RULE}`)),
    process: z.string().check(z.regex(NAME_PATTERN, `must be ${NAME_RULE}`)),
    args: z
      .array(z.string().check(z.refine((a) => !a.includes('\0'), 'must not contain a NUL byte')))
      .check(z.minLength(1, 'must name the program to run')),
    env: z._default(
      z.record(
        z.string().check(z.regex(envName, 'names must be letters, digits and underscores')),
        z.string().check(z.refine((v) => !v.includes('\0'), 'must not contain a NUL byte')),
      ),
      {},
    ),
    cwd: z._default(absolutePath, '/'),
    user: z._default(
      z.object({
        uid: z._default(z.number().check(z.int(), z.minimum(0), z.maximum(0xfffffffe)), DEFAULT_UID),
        gid: z._default(z.number().check(z.int(), z.minimum(0), z.maximum(0xfffffffe)), DEFAULT_GID),
      }),
      { uid: DEFAULT_UID, gid: DEFAULT_GID },
    ),
    capabilities: z._default(z.array(z.enum(ALLOWED_CAPABILITIES)), []),
    nofile: z._default(z.number().check(z.int(), z.minimum(64), z.maximum(1_048_576)), DEFAULT_NOFILE),
    /** Absent: the runtime sets none, because km1s holds them on the parent cgroup (cgroups.ts). */
    limits: z.optional(
      z.object({
        memoryBytes: z
          .number()
          .check(z.int(), z.minimum(MIN_MEMORY_BYTES, 'must be at least 4 MiB (4194304 bytes)')),
        /** Absent: no CPU quota. */
        cpuMillicores: z.optional(
          z.number().check(z.int(), z.minimum(MIN_CPU_MILLICORES, 'must be at least 10 millicores')),
        ),
        pids: z.number().check(z.int(), z.minimum(1, 'must be at least 1')),
      }),
    ),
    /** The empty directory (or any directory) used as the read-only root. */
    rootfs: absolutePath,
    /** The container's hostname: set only when the UTS namespace is new (a joined one keeps its own). */
    hostname: z.string().check(z.regex(NAME_PATTERN, `must be ${NAME_RULE}`)),
    systemPaths: z._default(z.array(absolutePath), [...DEFAULT_SYSTEM_PATHS]),
    /** The artifact directory, bound read-only at /app. */
    artifactDir: z.optional(absolutePath),
    tmpBytes: z._default(z.number().check(z.int(), z.minimum(1024 * 1024)), DEFAULT_TMP_BYTES),
    /** Host files rendered by renderHosts / renderHostname / renderResolvConf. */
    files: z.object({ hosts: absolutePath, hostname: absolutePath, resolvConf: absolutePath }),
    /** Network, UTS and IPC: a path to join (/run/netns/km1s-…, /proc/<pause>/ns/uts) or 'new'. */
    namespaces: z.object({ network: namespaceSource, uts: namespaceSource, ipc: namespaceSource }),
    /** Defaults to /km1s/<container>/<process>; an override must stay under a km1s name. */
    cgroupsPath: z.optional(
      z.string().check(
        z.regex(/^\/km1s[-/][A-Za-z0-9_./-]*$/, 'must be an absolute path starting with /km1s- or /km1s/'),
        z.refine((p) => !p.split('/').includes('..'), 'must not contain ..'),
      ),
    ),
  })
  .check(
    z.superRefine((spec, ctx) => {
      const seen = new Set<string>()
      for (const [i, path] of spec.systemPaths.entries()) {
        if (
          path === '/' ||
          RESERVED_DESTINATIONS.has(path) ||
          [...RESERVED_DESTINATIONS].some((r) => path.startsWith(`${r}/`))
        )
          ctx.addIssue({
            code: 'custom',
            path: ['systemPaths', i],
            message: `${path} is mounted by km1s itself`,
          })
        if (seen.has(path))
          ctx.addIssue({ code: 'custom', path: ['systemPaths', i], message: `${path} is listed twice` })
        seen.add(path)
      }
    }),
  )

export type ContainerProcessSpec = z.input<typeof containerProcessSpecSchema>
type ValidSpec = z.output<typeof containerProcessSpecSchema>

/** Checks a spec at the boundary; the error names the first bad field in one sentence. */
export function parseContainerProcessSpec(spec: unknown): ValidSpec {
  const result = containerProcessSpecSchema.safeParse(spec)
  if (result.success) return result.data
  const issue = result.error.issues[0]
  const field = issue === undefined || issue.path.length === 0 ? 'spec' : issue.path.join('.')
  throw new Km1sError(
    'ERR_INVALID_PROCESS_SPEC',
    `Invalid container process spec: ${field}: ${lowerFirst(issue?.message ?? 'is invalid')}.`,
  )
}

function lowerFirst(text: string): string {
  return text.charAt(0).toLowerCase() + text.slice(1)
}

export interface OciMount {
  destination: string
  type: string
  source: string
  options: string[]
}

export interface OciNamespace {
  type: 'pid' | 'mount' | 'network' | 'uts' | 'ipc'
  path?: string
}

export interface OciHook {
  path: string
  args: string[]
  env: string[]
  timeout: number
}

export interface OciConfig {
  ociVersion: string
  process: {
    terminal: false
    user: { uid: number; gid: number; additionalGids: number[] }
    args: string[]
    env: string[]
    cwd: string
    capabilities: Record<'bounding' | 'effective' | 'permitted' | 'inheritable' | 'ambient', string[]>
    rlimits: Array<{ type: string; hard: number; soft: number }>
    noNewPrivileges: true
  }
  root: { path: string; readonly: true }
  hostname?: string
  hooks?: { createRuntime: OciHook[] }
  mounts: OciMount[]
  linux: {
    namespaces: OciNamespace[]
    cgroupsPath: string
    resources: {
      devices: Array<{ allow: boolean; access: string }>
      memory?: { limit: number }
      cpu?: { quota: number; period: number }
      pids?: { limit: number }
    }
    maskedPaths: string[]
    readonlyPaths: string[]
  }
}

/** CFS quota for a share of CPUs: 1000 millicores is one CPU, a full period. */
export function cpuQuota(millicores: number): { quota: number; period: number } {
  return { quota: (millicores * CPU_PERIOD_US) / 1000, period: CPU_PERIOD_US }
}

// nosuid: setuid binaries of the host (su, passwd) must not work inside, even where no_new_privs would not hold.
const READ_ONLY_BIND = ['bind', 'ro', 'nosuid', 'nodev']

function bindReadOnly(source: string, destination: string): OciMount {
  return { destination, type: 'bind', source, options: [...READ_ONLY_BIND] }
}

/** The OCI config.json for one process; throws ERR_INVALID_PROCESS_SPEC naming the bad field. */
export function ociConfig(input: ContainerProcessSpec): OciConfig {
  const spec = parseContainerProcessSpec(input)
  const env = Object.entries(spec.env).map(([k, v]) => `${k}=${v}`)
  if (!('PATH' in spec.env)) env.unshift(`PATH=${DEFAULT_PATH_ENV}`)
  const caps = [...new Set(spec.capabilities)].sort()
  const mounts: OciMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev',
      type: 'tmpfs',
      source: 'tmpfs',
      options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
    },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    {
      destination: '/dev/shm',
      type: 'tmpfs',
      source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'],
    },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    ...spec.systemPaths.map((path) => bindReadOnly(path, path)),
    ...(spec.artifactDir === undefined ? [] : [bindReadOnly(spec.artifactDir, '/app')]),
    {
      destination: '/tmp',
      type: 'tmpfs',
      source: 'tmpfs',
      options: ['nosuid', 'nodev', 'mode=1777', `size=${spec.tmpBytes}`],
    },
    bindReadOnly(spec.files.hosts, '/etc/hosts'),
    bindReadOnly(spec.files.hostname, '/etc/hostname'),
    bindReadOnly(spec.files.resolvConf, '/etc/resolv.conf'),
  ]
  const joinable = (type: 'network' | 'uts' | 'ipc', source: string): OciNamespace =>
    source === 'new' ? { type } : { type, path: source }
  const config: OciConfig = {
    ociVersion: OCI_VERSION,
    process: {
      terminal: false,
      user: { uid: spec.user.uid, gid: spec.user.gid, additionalGids: [] },
      args: [...spec.args],
      env,
      cwd: spec.cwd,
      // Ambient too: without it a non-root user loses an allowed capability at execve.
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: caps, ambient: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: spec.nofile, soft: spec.nofile }],
      noNewPrivileges: true,
    },
    root: { path: spec.rootfs, readonly: true },
    mounts,
    linux: {
      namespaces: [
        { type: 'pid' },
        { type: 'mount' },
        joinable('network', spec.namespaces.network),
        joinable('uts', spec.namespaces.uts),
        joinable('ipc', spec.namespaces.ipc),
      ],
      cgroupsPath: spec.cgroupsPath ?? `/km1s/${spec.container}/${spec.process}`,
      resources: {
        // Deny every device; the runtime re-allows the standard ones it creates (null, zero, urandom, …).
        devices: [{ allow: false, access: 'rwm' }],
        ...(spec.limits === undefined
          ? {}
          : {
              memory: { limit: spec.limits.memoryBytes },
              ...(spec.limits.cpuMillicores === undefined
                ? {}
                : { cpu: cpuQuota(spec.limits.cpuMillicores) }),
              pids: { limit: spec.limits.pids },
            }),
      },
      maskedPaths: [...MASKED_PATHS],
      readonlyPaths: [...READONLY_PATHS],
    },
  }
  // A runtime refuses to set a hostname in a UTS namespace it did not create.
  if (spec.namespaces.uts === 'new') config.hostname = spec.hostname
  return config
}

// $1 the pause's fd of the gate FIFO (/proc/<pid>/fd/6), $2 that FIFO, $3 the file that says the network is
// made. While the network is not there yet the pause holds the FIFO open read-write (pause.ts): the hook
// opens the pause's own fd of it — a writer exists, so the open does not block — and `read` returns at
// the end of the file, when the pause closed it (network made, or the pause died). A pause that closed it
// already, or is gone, has no such fd: the open fails and the ready file decides. Only builtins: a shell is
// the only exec. The container's state, which the runtime writes on stdin, is read to the end first: a hook
// that exits before kills crun with SIGPIPE (seen: "read from the init process", then status 141).
const GATE_SCRIPT =
  'while read -r _; do :; done; [ -e "$3" ] || { [ "$1" -ef "$2" ] && read -r _ < "$1"; [ -e "$3" ]; } 2>/dev/null'

/**
 * `config` with a `createRuntime` hook that holds the program back until the pause process has made the
 * network (pause.ts): the runtime runs it after it made the container's namespaces and before the program
 * starts — and before it writes the pid file, so "running" still means the network is there. It fails,
 * and with it the start, when the pause ended without making the network.
 */
export function withStartGate(
  config: OciConfig,
  gate: { held: string; fifo: string; ready: string; timeoutSeconds?: number },
): OciConfig {
  if (![gate.held, gate.fifo, gate.ready].every((p) => p.startsWith('/')))
    throw new Km1sError(
      'ERR_INVALID_PROCESS_SPEC',
      'Invalid start gate: the gate and ready paths must be absolute.',
    )
  const hook: OciHook = {
    path: '/bin/sh',
    args: ['sh', '-c', GATE_SCRIPT, 'km1s-gate', gate.held, gate.fifo, gate.ready],
    env: [`PATH=${DEFAULT_PATH_ENV}`],
    timeout: gate.timeoutSeconds ?? 30,
  }
  return { ...config, hooks: { createRuntime: [hook] } }
}

const hostsEntrySchema = z.object({
  ip: z.union([z.ipv4(), z.ipv6()]),
  names: z
    .array(z.string().check(z.regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/, 'must be a host name')))
    .check(z.minLength(1)),
})
export type HostsEntry = z.input<typeof hostsEntrySchema>

/** /etc/hosts: loopback for the container's own hostname, then the given entries. */
export function renderHosts(hostname: string, entries: readonly HostsEntry[] = []): string {
  if (!NAME_PATTERN.test(hostname))
    throw new Km1sError(
      'ERR_INVALID_PROCESS_SPEC',
      `Invalid hostname ${JSON.stringify(hostname)}: use ${NAME_RULE}.`,
    )
  const lines = [
    '127.0.0.1\tlocalhost',
    '::1\tlocalhost ip6-localhost ip6-loopback',
    `127.0.1.1\t${hostname}`,
  ]
  for (const entry of entries) {
    const parsed = hostsEntrySchema.safeParse(entry)
    if (!parsed.success)
      throw new Km1sError(
        'ERR_INVALID_PROCESS_SPEC',
        `Invalid /etc/hosts entry ${JSON.stringify(entry)}: it needs an IP address and host names.`,
      )
    lines.push(`${parsed.data.ip}\t${parsed.data.names.join(' ')}`)
  }
  return `${lines.join('\n')}\n`
}

export function renderHostname(hostname: string): string {
  if (!NAME_PATTERN.test(hostname))
    throw new Km1sError(
      'ERR_INVALID_PROCESS_SPEC',
      `Invalid hostname ${JSON.stringify(hostname)}: use ${NAME_RULE}.`,
    )
  return `${hostname}\n`
}

const resolvSchema = z.object({
  nameservers: z.array(z.union([z.ipv4(), z.ipv6()])).check(z.minLength(1), z.maxLength(3)),
  search: z._default(
    z.array(z.string().check(z.regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/))).check(z.maxLength(6)),
    [],
  ),
  options: z._default(z.array(z.string().check(z.regex(/^[a-z0-9-]+(:[0-9]+)?$/))), []),
})
export type ResolvConf = z.input<typeof resolvSchema>

/** resolv.conf; km1s containers get `search km1s.internal` and the node's DNS (DESIGN.md, DNS). */
export function renderResolvConf(conf: ResolvConf): string {
  const parsed = resolvSchema.safeParse(conf)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new Km1sError(
      'ERR_INVALID_PROCESS_SPEC',
      `Invalid resolv.conf: ${issue?.path.join('.') || 'input'} ${issue?.message ?? 'is invalid'}.`,
    )
  }
  const { nameservers, search, options } = parsed.data
  const lines = nameservers.map((ns) => `nameserver ${ns}`)
  if (search.length > 0) lines.push(`search ${search.join(' ')}`)
  if (options.length > 0) lines.push(`options ${options.join(' ')}`)
  return `${lines.join('\n')}\n`
}
