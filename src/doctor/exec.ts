// Runs host tools for the doctor: never rejects, always bounded in time, output capped.
import { spawn } from 'node:child_process'
import { constants } from 'node:fs'
import { access, stat } from 'node:fs/promises'
import { delimiter, join } from 'node:path'

export const EXEC_TIMEOUT_MS = 5_000
const MAX_OUTPUT = 64 * 1024

export interface CommandResult {
  /** Exit status; null when the command did not run to an exit (missing, killed by the timeout). */
  code: number | null
  stdout: string
  stderr: string
  /** Why it did not run or finish: 'ENOENT', 'timed out after 5000 ms', … */
  error?: string
}

export function runCommand(
  file: string,
  args: readonly string[],
  opts: { timeoutMs?: number; input?: string } = {},
): Promise<CommandResult> {
  const timeoutMs = opts.timeoutMs ?? EXEC_TIMEOUT_MS
  return new Promise((resolve) => {
    let stdout = ''
    let stderr = ''
    let error: string | undefined
    let settled = false
    const finish = (code: number | null): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(error === undefined ? { code, stdout, stderr } : { code, stdout, stderr, error })
    }
    let child: ReturnType<typeof spawn>
    try {
      // stdin is a pipe only when we feed it: a tool must never wait on the doctor's terminal.
      child = spawn(file, args, { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
    } catch (err) {
      error = (err as NodeJS.ErrnoException).code ?? String(err)
      resolve({ code: null, stdout, stderr, error })
      return
    }
    const timer = setTimeout(() => {
      error = `timed out after ${timeoutMs} ms`
      child.kill('SIGKILL')
    }, timeoutMs)
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      if (stdout.length < MAX_OUTPUT) stdout += chunk
    })
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      if (stderr.length < MAX_OUTPUT) stderr += chunk
    })
    child.on('error', (err: NodeJS.ErrnoException) => {
      error ??= err.code ?? err.message
      finish(null)
    })
    child.on('close', (code, signal) => {
      if (code === null) error ??= `killed by ${signal}`
      finish(error === undefined ? code : null)
    })
    if (opts.input !== undefined && child.stdin) {
      child.stdin.on('error', () => {}) // EPIPE when the tool exits before reading: its exit status tells.
      child.stdin.end(opts.input)
    }
  })
}

/** The first line a failed command printed, for a one-line detail. */
export function firstErrorLine(result: CommandResult): string {
  if (result.error !== undefined) return result.error
  const line = `${result.stderr}\n${result.stdout}`
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l !== '')
  return line ?? `exit status ${result.code}`
}

// Non-root users often lack the sbin directories on PATH, where ip and nft live.
const EXTRA_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']

/** Looks a program up on PATH (plus the sbin directories); absolute paths are checked as they are. */
export async function findExecutable(name: string, pathEnv = process.env.PATH ?? ''): Promise<string | null> {
  const candidates = name.includes('/')
    ? [name]
    : [...new Set([...pathEnv.split(delimiter).filter((d) => d !== ''), ...EXTRA_DIRS])].map((dir) =>
        join(dir, name),
      )
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK)
      if ((await stat(candidate)).isFile()) return candidate
    } catch {
      // not here: try the next one
    }
  }
  return null
}
