// `km1s run` flags → a workload (pure, so it is unit-tested without the CLI).
import { Km1sError } from '../common/errors.ts'
import { normalizeWorkload, type WorkloadValue } from '../scheduler/workload.ts'

/** `k=v` arguments as a map; `flag` names the option in the error. */
export function parsePairs(args: string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const arg of args) {
    const eq = arg.indexOf('=')
    if (eq <= 0)
      throw new Km1sError('ERR_INVALID', `Invalid ${flag} '${arg}': give KEY=VALUE, as in ${flag} a=b.`)
    out[arg.slice(0, eq)] = arg.slice(eq + 1)
  }
  return out
}

/** Whether `--artifact` names a local file or directory (pushed first) rather than a tag or a CID. */
export function isLocalArtifact(value: string | undefined): value is string {
  return value !== undefined && /^(\.{1,2}(\/|$)|\/|~)/.test(value)
}

export interface RunOptions {
  artifact?: string
  replicas?: number
  cpu?: string
  memory?: string
  arch?: string
  label: string[]
  port: string[]
  service?: string
  headless?: boolean
  healthHttp?: string
  healthTcp?: string | boolean
  healthExec?: string
  healthPort?: string
  healthInterval?: string
  healthTimeout?: string
  healthHealthyAfter?: string
  healthUnhealthyAfter?: string
  healthRestartAfter?: string
  restart?: string
  env: string[]
  exclusive?: boolean
  wait?: boolean
}

/** The workload `km1s run` describes (validated: an error names the flag's field). */
export function workloadFromFlags(name: string, command: string[], o: RunOptions): WorkloadValue {
  const ports = o.port.map((p) => {
    const n = Number(p)
    if (!/^\d+$/.test(p))
      throw new Km1sError(
        'ERR_INVALID',
        `Invalid workload: ports must be whole numbers 1 to 65535, not '${p}'.`,
      )
    return n
  })
  const count = (v: string | undefined, flag: string) => {
    if (v === undefined) return undefined
    if (!/^\d+$/.test(v))
      throw new Km1sError('ERR_INVALID', `Invalid workload: ${flag} must be a whole number, not '${v}'.`)
    return Number(v)
  }
  const checks = [o.healthHttp, o.healthTcp, o.healthExec].filter((x) => x !== undefined).length
  if (checks > 1)
    throw new Km1sError(
      'ERR_INVALID',
      'Invalid workload: give one of --health-http, --health-tcp or --health-exec.',
    )
  const tuning = {
    ...(o.healthPort !== undefined ? { port: count(o.healthPort, '--health-port') } : {}),
    ...(o.healthInterval !== undefined ? { interval: o.healthInterval } : {}),
    ...(o.healthTimeout !== undefined ? { timeout: o.healthTimeout } : {}),
    ...(o.healthHealthyAfter !== undefined
      ? { healthyAfter: count(o.healthHealthyAfter, '--health-healthy-after') }
      : {}),
    ...(o.healthUnhealthyAfter !== undefined
      ? { unhealthyAfter: count(o.healthUnhealthyAfter, '--health-unhealthy-after') }
      : {}),
    ...(o.healthRestartAfter !== undefined
      ? { restartAfter: count(o.healthRestartAfter, '--health-restart-after') }
      : {}),
  }
  const health =
    o.healthHttp !== undefined
      ? { http: o.healthHttp, ...tuning }
      : o.healthTcp !== undefined
        ? { tcp: typeof o.healthTcp === 'string' ? count(o.healthTcp, '--health-tcp') : true, ...tuning }
        : o.healthExec !== undefined
          ? { exec: ['/bin/sh', '-c', o.healthExec], ...tuning }
          : Object.keys(tuning).length > 0
            ? (() => {
                throw new Km1sError(
                  'ERR_INVALID',
                  'Invalid workload: --health-* settings need a check: --health-http PATH, --health-tcp [PORT] or --health-exec CMD.',
                )
              })()
            : undefined
  return normalizeWorkload({
    name,
    command,
    artifact: o.artifact,
    replicas: o.replicas,
    cpu: o.cpu,
    memory: o.memory,
    arch: o.arch,
    labels: parsePairs(o.label, '--label'),
    ports,
    service: o.service,
    ...(o.headless ? { headless: true } : {}),
    ...(health ? { health } : {}),
    restart: o.restart,
    env: parsePairs(o.env, '--env'),
    exclusive: o.exclusive ?? false,
  })
}
