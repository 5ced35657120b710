// The WireGuard interface of a node: kernel WireGuard where `ip link add … type wireguard` works, else
// `wireguard-go` as a supervised child of the agent (in the foreground, memory-capped, restarted when it
// dies; the caller re-applies the configuration then, since the interface died with it).
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { errorMessage, Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import { runTool } from './wireguard.ts'

export const UAPI_DIR = '/var/run/wireguard'
/** wireguard-go's heap grows to ~75 MB under load without a limit (PLATFORM.md); with it, ≤ 32 MB. */
export const WIREGUARD_GO_MEMLIMIT = '32MiB'
const READY_WAIT_MS = 5_000
const STOP_WAIT_MS = 2_000
const RESTART_MIN_MS = 100
const RESTART_MAX_MS = 5_000

let SETPRIV: string | null | undefined

export type WgKind = 'kernel' | 'wireguard-go'

export interface WgDeviceInit {
  ifname: string
  log: Logger
  /** Called after wireguard-go was restarted (the interface is new and empty). */
  onRestart: () => void
}

export interface WgDeviceStats {
  kind: WgKind | null
  pid: number | null
  restarts: number
}

export class WgDevice {
  readonly ifname: string
  readonly #init: WgDeviceInit
  readonly #log: Logger
  #kind: WgKind | null = null
  #child: ChildProcess | undefined
  #restarts = 0
  #failures = 0
  #restartTimer: NodeJS.Timeout | undefined
  #stopping = false
  #ensuring: Promise<void> | undefined

  constructor(init: WgDeviceInit) {
    this.ifname = init.ifname
    this.#init = init
    this.#log = init.log
  }

  stats(): WgDeviceStats {
    return { kind: this.#kind, pid: this.#child?.pid ?? null, restarts: this.#restarts }
  }

  /** Makes the interface unless it is there (and, for wireguard-go, ours and alive). Idempotent. */
  ensure(): Promise<void> {
    this.#ensuring ??= this.#ensure().finally(() => {
      this.#ensuring = undefined
    })
    return this.#ensuring
  }

  async #ensure(): Promise<void> {
    if (this.#stopping) return
    const kind = await this.#linkKind()
    if (kind === 'wireguard') {
      this.#kind = 'kernel'
      return
    }
    if (kind !== null && this.#child !== undefined && running(this.#child)) return
    if (kind !== null) {
      // A wireguard-go nobody supervises (an agent killed with -9 left it): replace it with our own.
      this.#log.info({ ifname: this.ifname }, 'replacing a WireGuard interface this agent did not make')
      await runTool('ip', ['link', 'del', 'dev', this.ifname]).catch(() => {})
      await waitUntil(() => !existsSync(this.#socket()), READY_WAIT_MS)
    }
    if (this.#kind !== 'wireguard-go') {
      try {
        await runTool('ip', ['link', 'add', 'name', this.ifname, 'type', 'wireguard'])
        this.#kind = 'kernel'
        this.#log.info({ ifname: this.ifname }, 'made a kernel WireGuard interface')
        return
      } catch (err) {
        if (err instanceof Km1sError) throw err
        this.#log.info(
          { ifname: this.ifname, why: errorMessage(err) },
          'no kernel WireGuard here; using wireguard-go',
        )
        this.#kind = 'wireguard-go'
      }
    }
    await this.#spawn()
  }

  #socket(): string {
    return `${UAPI_DIR}/${this.ifname}.sock`
  }

  async #linkKind(): Promise<string | null | undefined> {
    try {
      const out = JSON.parse(await runTool('ip', ['-d', '-j', 'link', 'show', 'dev', this.ifname])) as Array<{
        linkinfo?: { info_kind?: string }
      }>
      return out[0]?.linkinfo?.info_kind ?? 'tun'
    } catch (err) {
      if (err instanceof Km1sError) throw err
      return null
    }
  }

  async #spawn(): Promise<void> {
    // setpriv sets the parent-death signal, then execs wireguard-go (same pid, still our child): an agent
    // killed with -9 takes its wireguard-go along instead of leaving it holding the interface.
    const [file, args] = this.#withPdeathsig(['wireguard-go', this.ifname])
    const child = spawn(file, args, {
      env: {
        ...process.env,
        WG_PROCESS_FOREGROUND: '1',
        GOMEMLIMIT: WIREGUARD_GO_MEMLIMIT,
        LOG_LEVEL: 'error',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    this.#child = child
    let stderr = ''
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-2000)
    })
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve)
      child.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          err.code === 'ENOENT'
            ? new Km1sError(
                'ERR_NO_WIREGUARD',
                'Neither kernel WireGuard nor wireguard-go is available; install wireguard-go and wireguard-tools (scripts/setup).',
              )
            : err,
        ),
      )
    })
    child.on('exit', (code, signal) => {
      if (this.#child === child) this.#child = undefined
      if (this.#stopping) return
      this.#log.warn(
        { ifname: this.ifname, code, signal, stderr: stderr.trim().slice(-500) },
        'wireguard-go ended; restarting it',
      )
      this.#scheduleRestart()
    })
    await spawned
    const ready = await waitUntil(() => existsSync(this.#socket()) || !running(child), READY_WAIT_MS)
    if (!ready || !running(child)) {
      throw new Error(`wireguard-go did not make ${this.ifname}: ${stderr.trim() || 'no socket'}`)
    }
    this.#failures = 0
    this.#log.info({ ifname: this.ifname, pid: child.pid }, 'wireguard-go is running')
  }

  #withPdeathsig(argv: string[]): [string, string[]] {
    SETPRIV ??= ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p)) ?? null
    return SETPRIV === null ? [argv[0] as string, argv.slice(1)] : [SETPRIV, ['--pdeathsig', 'KILL', ...argv]]
  }

  #scheduleRestart(): void {
    clearTimeout(this.#restartTimer)
    const delay = Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** this.#failures)
    this.#failures++
    this.#restartTimer = setTimeout(() => {
      if (this.#stopping) return
      this.#restarts++
      this.ensure().then(
        () => this.#init.onRestart(),
        (err: unknown) => {
          this.#log.error({ err: errorMessage(err) }, 'restarting wireguard-go failed; trying again')
          this.#scheduleRestart()
        },
      )
    }, delay)
  }

  /** Ends wireguard-go (its interface goes with it). A kernel interface stays: traffic keeps flowing. */
  async stop(): Promise<void> {
    this.#stopping = true
    clearTimeout(this.#restartTimer)
    await this.#ensuring?.catch(() => {})
    const child = this.#child
    if (child === undefined || !running(child)) return
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_WAIT_MS)
    await exited
    clearTimeout(timer)
  }
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null
}

async function waitUntil(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (check()) return true
    await new Promise((r) => setTimeout(r, 20))
  }
  return check()
}
