// An exec session: runs a PreparedExec (the runtime decides what argv enters the container) with pipes, or
// with a real terminal. Node has no pty, so a terminal comes from util-linux `script`, whose shell sets the
// size and then execs the command. A later size change of script's own terminal does not reach a process
// behind `crun exec -t` (crun relays through a pty of its own), so resize sets the size of the terminal the
// program itself holds, /proc/PID/fd/0, and the kernel signals its foreground group (SIGWINCH).
import { execFile, spawn } from 'node:child_process'
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { PassThrough, Readable, type Writable } from 'node:stream'
import { errorMessage, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import type { PreparedExec } from './types.ts'

export interface ExecExit {
  /** The exit status; with a terminal, 128 + N for a program killed by signal N (script reports it so). */
  code: number | null
  /** Set when the spawned program itself was killed by a signal. */
  signal: string | null
}

export interface ExecProcess {
  /** The program's input; ending it is end of file (with a terminal: the terminal's EOF character). */
  stdin: Writable
  /** With a terminal: everything the terminal shows, stderr included. */
  stdout: Readable
  /** null with a terminal. */
  stderr: Readable | null
  /** Changes the terminal's size; nothing without a terminal. */
  resize(cols: number, rows: number): void
  /** Signals the program inside (its pid from the pid file), else the spawned process. */
  kill(signal?: NodeJS.Signals): void
  /**
   * Settles once the program exited and its output ended (or 1 s after its exit, when something it left
   * behind holds the pipes open and nothing is waiting to be read). Rejects with ERR_EXEC_START when the
   * program could not be started.
   */
  exited: Promise<ExecExit>
}

export interface ExecOptions {
  tty: boolean
  cols?: number
  rows?: number
  log: Logger
}

const DEFAULT_COLS = 80
const DEFAULT_ROWS = 24
/** After the program exits, how long output may stay open before it is cut (see `exited`). */
const OUTPUT_GRACE_MS = 1_000
const PID_WAIT_MS = 3_000

/** One argument for sh, quoted so that sh reads back exactly `arg` (NUL cannot be passed at all). */
export function shQuote(arg: string): string {
  if (arg.includes('\0')) throw new Km1sError('ERR_INVALID', 'A command argument contains a NUL byte.')
  return `'${arg.replaceAll("'", `'\\''`)}'`
}

/**
 * The shell command `script` runs: set the terminal's size, record the shell's pid when asked (exec keeps
 * the pid, so it is the program's), restore SHELL (script needs it to be sh), then exec the argv.
 */
export function ttyCommand(
  argv: string[],
  o: { cols: number; rows: number; stty: string; pidFile: string | null; shell: string | undefined },
): string {
  const parts = [`${shQuote(o.stty)} cols ${o.cols} rows ${o.rows} 2>/dev/null`]
  if (o.pidFile !== null) parts.push(`echo $$ > ${shQuote(o.pidFile)}`)
  parts.push(o.shell === undefined ? 'unset SHELL' : `SHELL=${shQuote(o.shell)}; export SHELL`)
  parts.push(`exec ${argv.map(shQuote).join(' ')}`)
  return parts.join('; ')
}

/** A program's absolute path from the agent's PATH (and the usual places), or undefined. */
export function findProgram(name: string, path = process.env.PATH ?? ''): string | undefined {
  const dirs = [...path.split(delimiter), '/usr/local/bin', '/usr/bin', '/bin', '/usr/sbin', '/sbin']
  for (const dir of dirs) {
    if (!dir.startsWith('/')) continue
    const file = join(dir, name)
    try {
      accessSync(file, constants.X_OK)
      return file
    } catch {}
  }
  return undefined
}

const clampSize = (n: number | undefined, dflt: number) =>
  n !== undefined && Number.isInteger(n) && n >= 1 && n <= 65_535 ? n : dflt

export function startExec(prepared: PreparedExec, opts: ExecOptions): ExecProcess {
  const log = opts.log
  const tty = opts.tty
  const script = tty ? findProgram('script') : undefined
  const stty = tty ? findProgram('stty') : undefined
  if (tty && (script === undefined || stty === undefined)) {
    return failedExec(
      prepared,
      log,
      new Km1sError(
        'ERR_EXEC_START',
        "A terminal for exec needs util-linux's script and coreutils' stty on the node; install util-linux and coreutils.",
      ),
    )
  }
  let pidFile = prepared.pidFile
  let ownDir: string | undefined
  if (tty && pidFile === null) {
    ownDir = mkdtempSync(join(tmpdir(), 'km1s-exec-'))
    pidFile = join(ownDir, 'pid')
  }
  const argv0 = prepared.argv[0] ?? ''
  const child = tty
    ? spawn(
        script as string,
        [
          '-qec',
          ttyCommand(prepared.argv, {
            cols: clampSize(opts.cols, DEFAULT_COLS),
            rows: clampSize(opts.rows, DEFAULT_ROWS),
            stty: stty as string,
            // Ours when we made it; a runtime's pid file is written by the runtime.
            pidFile: ownDir !== undefined ? pidFile : null,
            shell: prepared.env.SHELL,
          }),
          '/dev/null',
        ],
        { env: { ...prepared.env, SHELL: '/bin/sh' }, cwd: prepared.cwd, stdio: 'pipe' },
      )
    : spawn(argv0, prepared.argv.slice(1), { env: prepared.env, cwd: prepared.cwd, stdio: 'pipe' })
  let spawned = false
  child.once('spawn', () => {
    spawned = true
  })
  const stdin = child.stdin as Writable
  const stdout = child.stdout as Readable
  const childStderr = child.stderr as Readable
  // A program that stops reading, or exits, must not crash the agent with EPIPE.
  stdin.on('error', (err) => log.debug({ err: errorMessage(err) }, 'exec stdin closed'))
  let scriptErrors = ''
  if (tty) {
    // script's own complaints, not the program's: the program's stderr is the terminal.
    childStderr.on('data', (d: Buffer) => {
      if (scriptErrors.length < 4096) scriptErrors += d.toString('utf8')
    })
  }

  let exitedFlag = false
  const readPid = (): number | null => {
    if (pidFile === null) return child.pid ?? null
    try {
      const pid = Number(readFileSync(pidFile, 'utf8').trim())
      return Number.isInteger(pid) && pid > 1 ? pid : null
    } catch {
      return null
    }
  }

  let cleaned: Promise<void> | undefined
  const cleanup = () => {
    cleaned ??= (async () => {
      if (ownDir !== undefined) rmSync(ownDir, { recursive: true, force: true })
      await prepared.cleanup().catch((err) => log.warn({ err: errorMessage(err) }, 'exec cleanup failed'))
    })()
    return cleaned
  }

  const exited = new Promise<ExecExit>((resolve, reject) => {
    let exit: ExecExit | undefined
    let open = tty ? 1 : 2
    const settle = () => {
      if (exit !== undefined && open === 0) void cleanup().then(() => resolve(exit as ExecExit))
    }
    const outputs = tty ? [stdout] : [stdout, childStderr]
    for (const s of outputs) {
      let done = false
      const ended = () => {
        if (done) return
        done = true
        open--
        settle()
      }
      s.once('end', ended)
      s.once('close', ended)
      s.once('error', ended)
    }
    // Also a failed kill emits 'error': only one before 'spawn' means the program never started.
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (spawned) return void log.debug({ err: errorMessage(err) }, 'exec process error')
      exitedFlag = true
      for (const s of outputs) s.destroy()
      const why = new Km1sError(
        'ERR_EXEC_START',
        existsSync(prepared.cwd)
          ? `Could not start ${argv0}: ${err.code ?? errorMessage(err)}.`
          : `Could not start ${argv0}: its working directory ${prepared.cwd} does not exist.`,
      )
      void cleanup().then(() => reject(why))
    })
    child.once('exit', (code, signal) => {
      exitedFlag = true
      exit = { code, signal }
      if (tty && scriptErrors.trim() !== '') log.warn({ stderr: scriptErrors.trim() }, 'script complained')
      // A background process the program started may hold the pipes: cut them once nothing waits in them.
      const cut = () => {
        const waiting = outputs.filter((s) => !s.readableEnded && !s.destroyed)
        if (waiting.length === 0) return
        for (const s of waiting) if (s.readableLength === 0) s.destroy()
        setTimeout(cut, OUTPUT_GRACE_MS).unref()
      }
      setTimeout(cut, OUTPUT_GRACE_MS).unref()
      settle()
    })
  })
  // Handled here so an unobserved failure is never an unhandled rejection; callers still see it.
  exited.catch(() => {})

  let wanted: { cols: number; rows: number } | undefined
  let resizing = false
  const applySizes = async () => {
    resizing = true
    try {
      while (wanted !== undefined && !exitedFlag) {
        const { cols, rows } = wanted
        wanted = undefined
        const pid = await waitForPid(readPid, () => exitedFlag)
        if (pid === null) return
        await new Promise<void>((done) =>
          execFile(
            stty as string,
            ['-F', `/proc/${pid}/fd/0`, 'cols', `${cols}`, 'rows', `${rows}`],
            (err) => {
              if (err && !exitedFlag) log.debug({ err: errorMessage(err), pid }, 'exec resize failed')
              done()
            },
          ),
        )
      }
    } finally {
      resizing = false
    }
  }

  return {
    stdin,
    stdout,
    stderr: tty ? null : childStderr,
    resize(cols, rows) {
      if (!tty) return
      wanted = { cols: clampSize(cols, DEFAULT_COLS), rows: clampSize(rows, DEFAULT_ROWS) }
      if (!resizing) void applySizes()
    },
    kill(signal = 'SIGKILL') {
      if (exitedFlag) return
      const pid = readPid()
      try {
        if (pid !== null && pid !== child.pid) process.kill(pid, signal)
        else child.kill(signal)
      } catch {
        child.kill(signal)
      }
    },
    exited,
  }
}

/** A session whose program could not start: no output, and `exited` rejects with `err`. */
function failedExec(prepared: PreparedExec, log: Logger, err: Km1sError): ExecProcess {
  const exited = prepared
    .cleanup()
    .catch((e) => log.warn({ err: errorMessage(e) }, 'exec cleanup failed'))
    .then((): ExecExit => {
      throw err
    })
  exited.catch(() => {})
  return {
    stdin: new PassThrough().resume(),
    stdout: Readable.from([]),
    stderr: null,
    resize() {},
    kill() {},
    exited,
  }
}

/** The program's pid once its pid file exists; null if it exits or the file does not come. */
async function waitForPid(read: () => number | null, gone: () => boolean): Promise<number | null> {
  const deadline = Date.now() + PID_WAIT_MS
  for (;;) {
    const pid = read()
    if (pid !== null || gone() || Date.now() > deadline) return pid
    await new Promise((r) => setTimeout(r, 20))
  }
}
