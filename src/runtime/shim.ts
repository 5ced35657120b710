// The shim: one tiny `sh` per running process that outlives the agent. Node cannot wait for a process that
// is not its child (no PR_SET_CHILD_SUBREAPER), and crun 1.8 deletes a container — and with it every trace
// of how it ended — as soon as `crun run` returns. So the shim runs the command in the foreground, keeps
// both output FIFOs open read-write (the process blocks instead of dying of EPIPE while the agent is away),
// and writes the exit status to a file that any later agent can read. ~0.5 MB per process, no Node.
import { spawn } from 'node:child_process'
import { join } from 'node:path'

export const SHIM_FILES = {
  shimPid: 'shim.pid',
  pid: 'pid',
  exit: 'exit',
  stdout: 'stdout',
  stderr: 'stderr',
} as const

// $1 the process directory; $2 a colon-separated list of cgroup.procs files to join first (or empty); then
// the command. `trap :` rather than `trap ''`: an ignored signal would be inherited by the command.
const SCRIPT = [
  'd=$1; cgs=$2; shift 2',
  'trap : HUP INT TERM QUIT',
  'IFS=:; for f in $cgs; do echo $$ > "$f" || exit 125; done; unset IFS',
  'echo $$ > "$d/shim.pid"',
  'exec 3<>"$d/stdout" 4<>"$d/stderr"',
  '"$@" </dev/null >&3 2>&4 3>&- 4>&-',
  'echo $? > "$d/exit"',
].join('\n')

export interface ShimCommand {
  dir: string
  cgroupProcs: string[]
  argv: string[]
  env: Record<string, string>
  cwd: string
}

/** The argv of the shim itself: shown in /proc/<pid>/cmdline, which adoption checks against `dir`. */
export function shimArgv(cmd: ShimCommand): string[] {
  return ['/bin/sh', '-c', SCRIPT, 'km1s-shim', cmd.dir, cmd.cgroupProcs.join(':'), ...cmd.argv]
}

/** Starts the shim in its own session, detached: it must survive the agent. */
export function spawnShim(cmd: ShimCommand): { pid: number; exited: Promise<void> } {
  const [file, ...args] = shimArgv(cmd)
  const child = spawn(file as string, args, {
    cwd: cmd.cwd,
    env: cmd.env,
    detached: true,
    stdio: 'ignore',
  })
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve())
    child.once('error', () => resolve())
  })
  child.unref()
  return { pid: child.pid ?? -1, exited }
}

export function shimFile(dir: string, name: keyof typeof SHIM_FILES): string {
  return join(dir, SHIM_FILES[name])
}
