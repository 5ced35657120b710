// The pause process of a container: one `unshare … sh` that holds the container's UTS and IPC namespaces
// (and, for a new container, makes its network namespace and network), then becomes `catatonit -P`.
//
// It tells the agent how far it got on a pipe, in two stages, so the agent can start the container's
// processes while the network is still being made (docs/runtime.md, "The create path"):
//   `ns`  — the namespaces exist, the hostname is set, the FIFOs are made: a `crun run` may join them now
//           (the network namespace by /proc/<pid>/ns/net: it has no name yet);
//   `net` — the network namespace is named and the network made (only with a network plan).
// Between the two, the pause holds the FIFO `net.gate` in the container directory open read-write on fd 6;
// the processes' `createRuntime` hook (withStartGate, oci.ts) reads it through /proc/<pid>/fd/6 until the
// pause closes it, so their programs start only once the network is there — and never wait for a pause
// that died, since a dead process holds no fd. No `flock`: one exec fewer for the pause and the hook.
import { spawn } from 'node:child_process'
import type { Socket } from 'node:net'
import { join } from 'node:path'

export const PAUSE_FILES = { pid: 'pause.pid', gate: 'net.gate', ready: 'net.ready' } as const
/** The fd on which the pause holds the gate FIFO open while it makes the network. */
export const GATE_FD = 6

/** The network the pause makes: `ip -batch` lines, as planFreshAttach plans them. */
export interface PauseNetwork {
  /** The name to give the new network namespace (`ip netns attach`). */
  netns: string
  /** The node's network namespace, as a path nsenter can enter. */
  hostNetnsPath: string
  containerFirst: string[]
  host: string[]
  container: string[]
}

export interface PauseRequest {
  /** The container directory: pause.pid, net.gate and net.ready go there. */
  dir: string
  hostname: string
  /** cgroup.procs files the pause writes itself into, in the background, once told they exist. */
  cgroupProcs: string[]
  /** FIFOs to make (mkfifo -m 0600) before the `ns` stage. */
  fifos: string[]
  network?: PauseNetwork
  /** PATH for the script. */
  path: string
}

export interface SpawnedPause {
  /** Known at once: `unshare` without --fork execs into the shell, which execs into catatonit. */
  pid: number
  /** The `ns` stage; rejects when the pause ends (or fails to start) before it. */
  ready: Promise<void>
  /** The `net` stage (resolved at once without a network); rejects when the pause ends before it. */
  network: Promise<void>
  /** Tells the pause its cgroups exist: it moves itself into them (in the background). Once. */
  cgroupsReady: () => void
}

// $1 dir, $2 hostname, $3 how many cgroup.procs files follow, then those files, then the FIFOs. Exit codes
// 121–127 say which step failed, also as an `end <code>` line: a pause forked by a shim (forkedPause) is
// not the agent's child, whose exit status the agent could read. SIGPIPE ignored: the agent reading the
// stages may be killed meanwhile, and the pause must go on regardless (catatonit inherits the disposition;
// it writes nothing). `ns` carries the pause's pid, for the same reason.
const SCRIPT = [
  'd=$1; h=$2; n=$3; shift 3; m=; l=; c=',
  'fail() { echo "end $1"; exit "$1"; }',
  'while [ "$n" -gt 0 ]; do c="$c $1"; shift; n=$((n-1)); done',
  "trap '' PIPE",
  // Its cgroups in the background, once the agent says they exist (`cg` on stdin; the end of stdin — the
  // agent died — tries anyway): a move into a v1 cgroup waits for an RCU grace period (6–8 ms measured
  // here), which the processes need not wait for. The $$ of a subshell is the pause's own pid.
  'exec 5<&0 </dev/null',
  '{ read -r x; for f in $c; do echo $$ > "$f" || exit 1; done; } <&5 & j=$!',
  'exec 5<&-',
  '[ -z "$KM1S_NETNS" ] || set -- "$@" "$d/net.gate"',
  'if [ $# -gt 0 ]; then mkfifo -m 0600 "$@" 2>/dev/null & m=$!; fi',
  'echo "$h" > /proc/sys/kernel/hostname || fail 126',
  '[ -z "$m" ] || wait $m',
  '[ -z "$KM1S_NETNS" ] || exec 6<>"$d/net.gate" || fail 127',
  'echo "ns $$"',
  'if [ -n "$KM1S_NETNS" ]; then',
  '  [ -z "$KM1S_FIRST" ] || printf "%s\\n" "$KM1S_FIRST" | ip -batch - || fail 122',
  // `netns attach` in the host side's batch: naming a namespace is a mount, whichever network namespace
  // the naming `ip` is in; one exec fewer than `ip netns attach` of its own.
  '  printf "netns attach %s %s\\n%s\\n" "$KM1S_NETNS" $$ "$KM1S_HOST" |',
  '    nsenter --net="$KM1S_HOSTNS" ip -batch - || fail 123',
  '  printf "%s\\n" "$KM1S_CTR" | ip -batch - || fail 124',
  '  : > "$d/net.ready" || fail 127',
  '  exec 6>&-',
  '  echo net',
  'fi',
  // In its cgroups before it says who it is: a later agent recognises a pause by its cgroup.
  'wait $j || fail 125',
  'unset KM1S_NETNS KM1S_HOSTNS KM1S_FIRST KM1S_HOST KM1S_CTR',
  'echo $$ > "$d/pause.pid" && exec catatonit -P >/dev/null',
].join('\n')

/** The argv and environment of the pause process (pure; the script is above). */
export function pauseCommand(req: PauseRequest): { argv: string[]; env: Record<string, string> } {
  const env: Record<string, string> = { PATH: req.path }
  if (req.network !== undefined) {
    env.KM1S_NETNS = req.network.netns
    env.KM1S_HOSTNS = req.network.hostNetnsPath
    env.KM1S_FIRST = req.network.containerFirst.join('\n')
    env.KM1S_HOST = req.network.host.join('\n')
    env.KM1S_CTR = req.network.container.join('\n')
  }
  const argv = [
    'unshare',
    ...(req.network !== undefined ? ['--net'] : []),
    '--uts',
    '--ipc',
    '--',
    '/bin/sh',
    '-c',
    SCRIPT,
    'km1s-pause',
    req.dir,
    req.hostname,
    String(req.cgroupProcs.length),
    ...req.cgroupProcs,
    ...req.fifos,
  ]
  return { argv, env }
}

/** What the exit status of a pause that ended early says. */
export function pauseFailure(code: number | null, signal: string | null): string {
  const step: Record<number, string> = {
    122: 'preparing the network namespace failed',
    123: 'naming the network namespace or making its host side failed',
    124: 'the container side of the network failed',
    125: 'moving into its cgroups failed',
    126: 'setting the hostname failed',
    127: 'opening the network gate failed',
  }
  if (code !== null && step[code] !== undefined) return `the pause process ended: ${step[code]}`
  if (signal === 'ended') return 'the pause process ended before it was ready'
  return `the pause process ended (${signal ?? `status ${code}`}) before it was ready`
}

/** Stages seen so far in the pause's output (whole lines only): `ns <pid>`, `net`, and `end <code>`. */
export function pauseStages(output: string): { ns: boolean; net: boolean; pid?: number; end?: number } {
  const stages: { ns: boolean; net: boolean; pid?: number; end?: number } = { ns: false, net: false }
  const lines = output.split('\n')
  lines.pop()
  for (const line of lines) {
    const [word, arg, ...rest] = line.split(' ')
    const n = arg !== undefined && /^[0-9]{1,9}$/.test(arg) && rest.length === 0 ? Number(arg) : undefined
    if (word === 'ns' && (arg === undefined || n !== undefined)) {
      stages.ns = true
      if (n !== undefined && n > 1) stages.pid = n
    } else if (line === 'net') stages.net = true
    else if (word === 'end' && n !== undefined) stages.end = n
  }
  return stages
}

/**
 * The pause's stages as promises, from its output stream. `ended` says why it stopped early: the caller
 * calls it when the pause (or, for a forked pause, its output) ends; settling a settled promise does
 * nothing.
 */
function watchStages(
  out: NodeJS.ReadableStream | null,
  hasNetwork: boolean,
): {
  pid: Promise<number>
  ns: Promise<void>
  net: Promise<void>
  fail: (err: Error) => void
  end: () => number | undefined
} {
  const pid = Promise.withResolvers<number>()
  const ns = Promise.withResolvers<void>()
  const net = Promise.withResolvers<void>()
  // Rejections are the caller's to observe; unobserved ones must not crash the agent.
  pid.promise.catch(() => {})
  ns.promise.catch(() => {})
  net.promise.catch(() => {})
  if (!hasNetwork) void ns.promise.then(() => net.resolve(), net.reject)
  let output = ''
  let end: number | undefined
  out?.setEncoding('utf8')
  out?.on('data', (chunk: string) => {
    output += chunk
    const stages = pauseStages(output)
    end = stages.end
    if (stages.pid !== undefined) pid.resolve(stages.pid)
    if (stages.ns) ns.resolve()
    if (stages.net) net.resolve()
  })
  out?.on('error', () => {})
  return {
    pid: pid.promise,
    ns: ns.promise,
    net: net.promise,
    fail: (err: Error) => {
      pid.reject(err)
      ns.reject(err)
      net.reject(err)
    },
    end: () => end,
  }
}

/** Starts the pause process, detached (it must survive the agent); stages arrive on its stdout. */
export function spawnPause(req: PauseRequest): SpawnedPause {
  const { argv, env } = pauseCommand(req)
  const child = spawn(argv[0] as string, argv.slice(1), {
    detached: true,
    stdio: ['pipe', 'pipe', 'ignore'],
    env,
  })
  const stages = watchStages(child.stdout, req.network !== undefined)
  // 'close' comes after the last output was read.
  child.once('close', (code, signal) => stages.fail(new Error(pauseFailure(code, signal))))
  child.once('error', stages.fail)
  child.stdin?.on('error', () => {})
  ;(child.stdin as Socket | null)?.unref()
  child.unref()
  return {
    pid: child.pid ?? -1,
    ready: stages.ns,
    network: stages.net,
    cgroupsReady: () => {
      if (child.stdin?.writable) child.stdin.end('cg\n')
    },
  }
}

/**
 * The environment with which a shim forks the pause itself (shim.ts): one spawn from the agent per new
 * container instead of two — each costs the agent's main thread a fork of its whole address space
 * (docs/benchmarks.md). The shim runs `unshare $KM1S_PAUSE_NS -- /bin/sh -c "$KM1S_PAUSE" $KM1S_PAUSE_ARGS`
 * with the words split at newlines, its fd 3 as the pause's stdin and stdout.
 */
export function pauseEnv(req: PauseRequest): Record<string, string> {
  const { argv, env } = pauseCommand(req)
  const dash = argv.indexOf('--')
  const words = argv.slice(dash + 4)
  if (words.some((w) => w.includes('\n') || w === '')) {
    throw new Error('a pause argument is empty or holds a newline')
  }
  const { PATH: _path, ...rest } = env
  return {
    ...rest,
    KM1S_PAUSE: argv[dash + 3] as string,
    KM1S_PAUSE_NS: argv.slice(1, dash).join('\n'),
    KM1S_PAUSE_ARGS: words.join('\n'),
  }
}

/** A pause forked by a shim: its pid arrives with the `ns` stage. */
export interface ForkedPause {
  pid: Promise<number>
  ready: Promise<void>
  network: Promise<void>
  cgroupsReady: () => void
}

/** Follows a pause forked by a shim, through the shim's fd 3 (a socket: both ways). */
export function forkedPause(io: Socket, hasNetwork: boolean): ForkedPause {
  const stages = watchStages(io, hasNetwork)
  // The shim closed its copy at once: the end of the stream is the pause's exec into catatonit (after
  // `net`, when nothing is pending any more) or its end.
  io.once('close', () => {
    const code = stages.end()
    stages.fail(new Error(code === undefined ? pauseFailure(null, 'ended') : pauseFailure(code, null)))
  })
  // Not unref'd, as a spawned pause's stdout is not: the stream ends by itself, at the exec or the end.
  return {
    pid: stages.pid,
    ready: stages.ns,
    network: stages.net,
    cgroupsReady: () => {
      if (io.writable) io.end('cg\n')
    },
  }
}

export function pauseFile(dir: string, name: keyof typeof PAUSE_FILES): string {
  return join(dir, PAUSE_FILES[name])
}
