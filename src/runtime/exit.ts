// Why a process ended, whether it comes back, and when: pure, so every rule is a unit test. Plus the one
// check before a start that turns "crun: exec failed" into a reason a person can act on.
import { constants } from 'node:os'
import { arch } from 'node:process'
import type { ExitInfo, RestartPolicy } from './types.ts'

export const BACKOFF_BASE_MS = 200
export const BACKOFF_CAP_MS = 30_000
/** A process that ran this long before it ended starts its back-off from the beginning again. */
export const BACKOFF_RESET_AFTER_MS = 10_000

/** Delay before restart number `failures` (0 for the first restart after a good run). */
export function backoffDelay(failures: number): number {
  return Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures, 20))
}

export function shouldRestart(policy: RestartPolicy, exit: ExitInfo): boolean {
  if (exit.reason === 'stopped') return false
  if (policy === 'always') return true
  if (policy === 'never') return false
  return !(exit.reason === 'exited' && exit.code === 0)
}

const SIGNAL_NAMES = new Map<number, string>(Object.entries(constants.signals).map(([name, n]) => [n, name]))

function mib(bytes: number): string {
  return `${Math.round((bytes / 1024 / 1024) * 10) / 10} MiB`
}

export interface ExitFacts {
  /** The exit status the shim recorded: the runtime's, which is 128+n for a process killed by signal n. */
  code: number | null
  stoppedByUs: boolean
  oomKilled: boolean
  memoryLimit: number
  at: Date
}

export function classifyExit(f: ExitFacts): ExitInfo {
  const at = f.at.toISOString()
  if (f.stoppedByUs) {
    return { reason: 'stopped', code: f.code, signal: null, message: 'stopped by km1s', at }
  }
  if (f.oomKilled) {
    return {
      reason: 'oom-killed',
      code: f.code,
      signal: 'SIGKILL',
      message: `killed: out of memory (limit ${mib(f.memoryLimit)})`,
      at,
    }
  }
  if (f.code === null) {
    return {
      reason: 'start-failed',
      code: null,
      signal: null,
      message: 'its supervisor ended without recording an exit status',
      at,
    }
  }
  if (f.code > 128 && f.code <= 128 + 64) {
    const signal = SIGNAL_NAMES.get(f.code - 128) ?? `signal ${f.code - 128}`
    return { reason: 'signal', code: f.code, signal, message: `killed by ${signal}`, at }
  }
  return { reason: 'exited', code: f.code, signal: null, message: `exited with code ${f.code}`, at }
}

/** ELF e_machine values of the architectures km1s runs on. */
const ELF_MACHINES: Record<number, string> = { 3: 'x86 (32-bit)', 40: 'armv7', 62: 'amd64', 183: 'arm64' }
const HOST_MACHINE: Record<string, number> = { x64: 62, arm64: 183, arm: 40, ia32: 3 }

export interface ExecutableProblem {
  reason: 'not-found' | 'not-executable' | 'exec-format'
  message: string
}

/** What precheck needs to know about a file: nothing here touches the disk. */
export interface FileFacts {
  kind: 'file' | 'directory' | 'other'
  mode: number
  uid: number
  gid: number
  /** The first 20 bytes. */
  head: Uint8Array
}

/**
 * Whether `file` can be executed by uid/gid on this CPU. A file starting with #! is a script: the kernel
 * runs its interpreter. Anything else must be an ELF binary for this machine.
 */
export function executableProblem(
  shown: string,
  file: FileFacts | undefined,
  user: { uid: number; gid: number },
  hostArch: string = arch,
): ExecutableProblem | undefined {
  if (file === undefined) {
    return { reason: 'not-found', message: `${shown} does not exist in the container` }
  }
  if (file.kind !== 'file') {
    return { reason: 'not-executable', message: `${shown} is a ${file.kind}, not a program` }
  }
  const bits =
    user.uid === 0
      ? file.mode & 0o111
      : user.uid === file.uid
        ? file.mode & 0o100
        : user.gid === file.gid
          ? file.mode & 0o010
          : file.mode & 0o001
  if (bits === 0) {
    return {
      reason: 'not-executable',
      message: `${shown} is not executable for uid ${user.uid} (mode ${(file.mode & 0o7777).toString(8)})`,
    }
  }
  const h = file.head
  if (h[0] === 0x23 && h[1] === 0x21) return undefined
  if (h.length >= 20 && h[0] === 0x7f && h[1] === 0x45 && h[2] === 0x4c && h[3] === 0x46) {
    const little = h[5] === 1
    const machine = little ? (h[18] ?? 0) | ((h[19] ?? 0) << 8) : ((h[18] ?? 0) << 8) | (h[19] ?? 0)
    const want = HOST_MACHINE[hostArch]
    if (want === undefined || machine === want) return undefined
    return {
      reason: 'exec-format',
      message: `${shown} is a binary for ${ELF_MACHINES[machine] ?? `ELF machine ${machine}`}, and this node is ${ELF_MACHINES[want] ?? hostArch}`,
    }
  }
  return { reason: 'exec-format', message: `${shown} is neither a binary nor a script starting with #!` }
}
