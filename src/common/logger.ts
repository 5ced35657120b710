import { pino } from 'pino'

export type Logger = pino.Logger
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent'

/** Structured, levelled JSON logs on stderr (one line per event); `KM1S_LOG_LEVEL` overrides the level. */
export function createLogger(opts: { level?: LogLevel; name?: string } = {}): Logger {
  const level = (process.env.KM1S_LOG_LEVEL as LogLevel | undefined) ?? opts.level ?? 'info'
  return pino(
    { level, base: opts.name ? { node: opts.name } : {}, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: 2, sync: true }),
  )
}

/** Logs a message at most once per key per interval (hostile peers must not flood the log). */
export function createLogThrottle(intervalMs: number, now: () => number = Date.now) {
  const last = new Map<string, number>()
  return (key: string): boolean => {
    const t = now()
    const prev = last.get(key)
    if (prev !== undefined && t - prev < intervalMs) return false
    last.set(key, t)
    if (last.size > 10_000) last.clear()
    return true
  }
}
