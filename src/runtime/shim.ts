// The shim: one tiny `sh` per running process that outlives the agent. Node cannot wait for a process that
// is not its child (no PR_SET_CHILD_SUBREAPER), and crun 1.8 deletes a container — and with it every trace
// of how it ended — as soon as `crun run` returns. So the shim runs the command in the foreground, keeps
// both output FIFOs open read-write (the process blocks instead of dying of EPIPE while the agent is away),
// and writes the exit status to a file that any later agent can read. ~0.5 MB per process, no Node.
import { spawn } from 'node:child_process'
import { type FSWatcher, watch } from 'node:fs'
import { readFile } from 'node:fs/promises'
import type { Socket } from 'node:net'
import { basename, dirname, join } from 'node:path'

export const SHIM_FILES = {
  shimPid: 'shim.pid',
  pid: 'pid',
  exit: 'exit',
  stdout: 'stdout',
  stderr: 'stderr',
} as const

// $1 the process directory; $2 a colon-separated list of cgroup.procs files to join first (or empty); $3
// `gated` or empty; then the command. `trap :` rather than `trap ''`: an ignored signal would be inherited
// by the command. Gated, the command holds a gate (gateArgv) that waits for the agent's `go`, which comes
// on the shim's stdin (passed on as fd 5); a gate that was not let through exits NOT_RUN before anything
// ran, and then there is no exit status to record: a later agent sees a start cut short.
const NOT_RUN = 199
const SCRIPT = [
  'd=$1; cgs=$2; g=$3; shift 3',
  'trap : HUP INT TERM QUIT',
  'IFS=:; for f in $cgs; do echo $$ > "$f" || exit 125; done; unset IFS',
  'echo $$ > "$d/shim.pid"',
  'if [ -n "$g" ]; then',
  '  exec 5<&0 </dev/null',
  '  "$@"; s=$?',
  'else',
  '  exec 3<>"$d/stdout" 4<>"$d/stderr"',
  '  "$@" </dev/null >&3 2>&4 3>&- 4>&-; s=$?',
  'fi',
  `[ "$s" = ${NOT_RUN} ] && [ -n "$g" ] && [ ! -s "$d/pid" ] || echo $s > "$d/exit"`,
].join('\n')

// $1 the process directory, then the command. Both FIFOs opened read-write, as the ungated shim does: while
// no agent reads, the process blocks on a full pipe instead of dying of EPIPE.
const GATE = [
  'd=$1; shift',
  'read -r go <&5; exec 5<&-',
  `[ "$go" = go ] || exit ${NOT_RUN}`,
  'exec 1<>"$d/stdout" 2<>"$d/stderr"',
  'exec "$@"',
].join('\n')

/**
 * The gate of a gated shim's command, to put after whatever may run before the agent says go — for crun,
 * after its wrapper (detect.ts): the wrapper's execs then overlap the pause process making the namespaces.
 */
export function gateArgv(dir: string): string[] {
  return ['/bin/sh', '-c', GATE, 'km1s-gate', dir]
}

export interface ShimCommand {
  dir: string
  cgroupProcs: string[]
  argv: string[]
  env: Record<string, string>
  cwd: string
  /** The command holds a gate (gateArgv) that waits for release(true). */
  gated?: boolean
}

/** The argv of the shim itself: shown in /proc/<pid>/cmdline, which adoption checks against `dir`. */
export function shimArgv(cmd: ShimCommand): string[] {
  return [
    '/bin/sh',
    '-c',
    SCRIPT,
    'km1s-shim',
    cmd.dir,
    cmd.cgroupProcs.join(':'),
    cmd.gated ? 'gated' : '',
    ...cmd.argv,
  ]
}

/** Starts the shim in its own session, detached: it must survive the agent. */
export function spawnShim(cmd: ShimCommand): {
  pid: number
  exited: Promise<void>
  /** A gated shim: run the command (true) or end without it (false). Once; nothing for an ungated one. */
  release: (run: boolean) => void
} {
  const [file, ...args] = shimArgv(cmd)
  const child = spawn(file as string, args, {
    cwd: cmd.cwd,
    env: cmd.env,
    detached: true,
    stdio: [cmd.gated ? 'pipe' : 'ignore', 'ignore', 'ignore'],
  })
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve())
    child.once('error', () => resolve())
  })
  // A shim that ended meanwhile makes the write fail with EPIPE: nothing to do about it.
  child.stdin?.on('error', () => {})
  ;(child.stdin as Socket | null)?.unref()
  let released = false
  const release = (run: boolean) => {
    if (released || child.stdin === null) return
    released = true
    child.stdin.end(run ? 'go\n' : 'no\n')
  }
  child.unref()
  return { pid: child.pid ?? -1, exited, release }
}

export function shimFile(dir: string, name: keyof typeof SHIM_FILES): string {
  return join(dir, SHIM_FILES[name])
}

/** A pid in `path`, or null when there is none (yet): absent, empty, half-written or not a pid. */
export async function readPidFile(path: string): Promise<number | null> {
  try {
    const pid = Number((await readFile(path, 'utf8')).trim())
    return Number.isInteger(pid) && pid > 1 ? pid : null
  } catch {
    return null
  }
}

/**
 * Waits for a pid in `path`: told by inotify (fs.watch on its directory) when the runtime writes it, so
 * that twenty starts at once do not each read the file every few ms; a slow poll covers a missed event.
 * Null when `gaveUp` resolves first (the shim ended) or after `timeoutMs`.
 */
export function waitForPidFile(
  path: string,
  gaveUp: Promise<unknown>,
  timeoutMs: number,
  pollMs = 50,
): Promise<number | null> {
  return new Promise((resolve) => {
    let done = false
    let watcher: FSWatcher | undefined
    const finish = (pid: number | null) => {
      if (done) return
      done = true
      watcher?.close()
      clearInterval(poll)
      clearTimeout(timer)
      resolve(pid)
    }
    const check = () => {
      void readPidFile(path).then((pid) => {
        if (pid !== null) finish(pid)
      })
    }
    const name = basename(path)
    try {
      watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
        if (file === null || file === name) check()
      })
      watcher.on('error', () => {})
    } catch {
      // No inotify (or the directory is gone): the poll below still answers.
    }
    const poll = setInterval(check, pollMs)
    const timer = setTimeout(() => finish(null), timeoutMs)
    void gaveUp.then(
      () => finish(null),
      () => finish(null),
    )
    check()
  })
}
