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
import { HYBRID_SCRIPT } from './detect.ts'
import { type ForkedPause, forkedPause } from './pause.ts'

export const SHIM_FILES = {
  shimPid: 'shim.pid',
  pid: 'pid',
  exit: 'exit',
  stdout: 'stdout',
  stderr: 'stderr',
} as const

// $1 the process directory; $2 a colon-separated list of cgroup.procs files to join first (or empty); $3
// `gated` or empty; then the command. `trap :` rather than `trap ''`: an ignored signal would be inherited
// by the command.
//
// Gated, the shim is spawned before its cgroups and the container's namespaces exist, to pay for its own
// exec and crun's wrapper meanwhile. The command then holds a gate (gateArgv) that reads the agent's lines
// from the shim's stdin (passed on as fd 5): `cg` — the cgroups exist: it moves the shim and itself (the
// future crun) into them; `go` — run. Any other line, or the end of stdin (the agent died), and the gate
// exits NOT_RUN before anything ran; then there is no exit status to record, and a later agent sees a
// start cut short.
//
// `inline`: the shim holds the gate itself (it moves only itself; crun, its child, follows), for a command
// that needs no shell of its own before crun — crun directly, or `nsenter` into the runtime's mount
// namespace (makeCrunNamespace, detect.ts): one exec fewer than a gate in the command.
//
// A gated shim may also fork the container's pause process (pause.ts, `pauseEnv`) before anything else, with
// its fd 3 as the pause's stdin and stdout: one spawn from the agent per new container instead of two. The
// pause's arguments are split at newlines, globbing off.
const NOT_RUN = 199
const PAUSE_VARS =
  'KM1S_PAUSE KM1S_PAUSE_NS KM1S_PAUSE_ARGS KM1S_NETNS KM1S_HOSTNS KM1S_FIRST KM1S_HOST KM1S_CTR'
const SCRIPT = [
  'd=$1; cgs=$2; g=$3; shift 3',
  'trap : HUP INT TERM QUIT',
  'if [ -n "$g" ]; then',
  '  echo $$ > "$d/shim.pid"',
  '  if [ -n "$KM1S_PAUSE" ]; then',
  "    IFS='\n'; set -f",
  '    unshare $KM1S_PAUSE_NS -- /bin/sh -c "$KM1S_PAUSE" $KM1S_PAUSE_ARGS <&3 >&3 3<&- &',
  '    unset IFS; set +f',
  '    exec 3<&-',
  `    unset ${PAUSE_VARS}`,
  '  fi',
  '  exec 5<&0 </dev/null',
  '  if [ "$g" = inline ]; then',
  `    s=${NOT_RUN}`,
  '    read -r c <&5 && [ "$c" = cg ] &&',
  '      { IFS=:; for f in $cgs; do echo $$ > "$f" || { s=125; break; }; done; unset IFS; [ "$s" != 125 ]; } &&',
  '      read -r go <&5 && [ "$go" = go ] &&',
  '      { exec 5<&-; "$@" </dev/null 1<>"$d/stdout" 2<>"$d/stderr"; s=$?; }',
  '  else',
  '    KM1S_SHIM=$$ "$@"; s=$?',
  '  fi',
  'else',
  '  IFS=:; for f in $cgs; do echo $$ > "$f" || exit 125; done; unset IFS',
  '  echo $$ > "$d/shim.pid"',
  '  exec 3<>"$d/stdout" 4<>"$d/stderr"',
  '  "$@" </dev/null >&3 2>&4 3>&- 4>&-; s=$?',
  'fi',
  `[ "$s" = ${NOT_RUN} ] && [ -n "$g" ] && [ ! -s "$d/pid" ] || echo $s > "$d/exit"`,
].join('\n')

// $1 the process directory, $2 the cgroup.procs files, then the command. The shim is moved only while it
// is still this gate's parent (a pid that is not the shim's is never moved). Both FIFOs are opened
// read-write, as the ungated shim does: while no agent reads, the process blocks on a full pipe instead of
// dying of EPIPE.
const GATE = [
  'd=$1; cgs=$2; shift 2',
  `read -r c <&5; [ "$c" = cg ] || exit ${NOT_RUN}`,
  `[ "$PPID" = "$KM1S_SHIM" ] || exit ${NOT_RUN}`,
  'IFS=:; for f in $cgs; do echo "$KM1S_SHIM" > "$f" && echo $$ > "$f" || exit 125; done; unset IFS',
  'read -r go <&5; exec 5<&-',
  `[ "$go" = go ] || exit ${NOT_RUN}`,
  'unset KM1S_SHIM',
  'exec 1<>"$d/stdout" 2<>"$d/stderr"',
  'exec "$@"',
].join('\n')

/**
 * The gate of a gated shim's command, to put after whatever may run before the agent says go — for crun,
 * after its wrapper (detect.ts): the shim's exec and the wrapper's then overlap the cgroups being made and
 * the pause process making the namespaces. `cgroupProcs` as for the shim.
 */
export function gateArgv(dir: string, cgroupProcs: string[]): string[] {
  return ['/bin/sh', '-c', GATE, 'km1s-gate', dir, cgroupProcs.join(':')]
}

/**
 * A gated shim's command: `wrapper`, the gate, `run`. The hybrid wrapper (detect.ts) is itself a shell that
 * ends in `exec "$@"`: the gate then runs in that shell, one exec fewer on the shim's chain.
 */
export function gatedCommand(wrapper: string[], dir: string, cgroupProcs: string[], run: string[]): string[] {
  const [unshare, m, propagation, mode, sh, c, script, v2Mount] = wrapper
  if (wrapper.length === 8 && sh === '/bin/sh' && c === '-c' && script === HYBRID_SCRIPT && v2Mount) {
    const merged = `umount "$0" || exit\n${GATE}`
    return [
      unshare,
      m,
      propagation,
      mode,
      sh,
      c,
      merged,
      v2Mount,
      dir,
      cgroupProcs.join(':'),
      ...run,
    ] as string[]
  }
  return [...wrapper, ...gateArgv(dir, cgroupProcs), ...run]
}

export interface ShimCommand {
  dir: string
  cgroupProcs: string[]
  argv: string[]
  env: Record<string, string>
  cwd: string
  /** The command holds a gate (gateArgv) that waits for release(true). */
  gated?: boolean
  /** Gated, with the gate in the shim itself instead of in the command. */
  inline?: boolean
  /** A gated shim only: fork the container's pause first, with this environment (pauseEnv, pause.ts). */
  pause?: Record<string, string>
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
    cmd.gated ? (cmd.inline ? 'inline' : 'gated') : '',
    ...cmd.argv,
  ]
}

/** Starts the shim in its own session, detached: it must survive the agent. */
export function spawnShim(cmd: ShimCommand): {
  pid: number
  /** The pause it forked (`cmd.pause`). */
  pause: ForkedPause | undefined
  exited: Promise<void>
  /** A gated shim: its cgroups exist (it moves into them). Once, before release; nothing for an ungated one. */
  cgroupsReady: () => void
  /**
   * A gated shim: run the command (true; its cgroups must exist by then) or end without it (false). Once;
   * nothing for an ungated one.
   */
  release: (run: boolean) => void
} {
  const [file, ...args] = shimArgv(cmd)
  const pause = cmd.gated ? cmd.pause : undefined
  const child = spawn(file as string, args, {
    cwd: cmd.cwd,
    env: pause ? { ...cmd.env, ...pause } : cmd.env,
    detached: true,
    stdio: [cmd.gated ? 'pipe' : 'ignore', 'ignore', 'ignore', ...(pause ? (['pipe'] as const) : [])],
  })
  const pauseIo = pause ? (child.stdio[3] as Socket | null) : null
  const forked = pauseIo ? forkedPause(pauseIo, pause?.KM1S_NETNS !== undefined) : undefined
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve())
    child.once('error', () => resolve())
  })
  // A shim that ended meanwhile makes the write fail with EPIPE: nothing to do about it.
  child.stdin?.on('error', () => {})
  ;(child.stdin as Socket | null)?.unref()
  let moved = false
  let released = false
  const cgroupsReady = () => {
    if (moved || released || child.stdin === null) return
    moved = true
    child.stdin.write('cg\n')
  }
  // The caller lets it run only once the cgroups exist: `cg` goes first if it was not sent yet.
  const release = (run: boolean) => {
    if (released || child.stdin === null) return
    released = true
    child.stdin.end(run ? `${moved ? '' : 'cg\n'}go\n` : 'no\n')
  }
  child.unref()
  return { pid: child.pid ?? -1, pause: forked, exited, cgroupsReady, release }
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
