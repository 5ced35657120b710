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

/**
 * Seam for the artifacts branch: `--artifact ./dir` (a local path) is pushed first and replaced by the
 * resulting CID. Until that push API exists, a path is refused with what to do instead.
 */
export function artifactRef(value: string | undefined): string | undefined {
  if (value === undefined) return undefined
  if (/^(\.{1,2}(\/|$)|\/|~)/.test(value))
    throw new Km1sError(
      'ERR_UNSUPPORTED',
      `--artifact ${value} is a local path; push it first with 'km1s push ${value} --name NAME:TAG', then run with --artifact NAME:TAG.`,
    )
  return value
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
  return normalizeWorkload({
    name,
    command,
    artifact: artifactRef(o.artifact),
    replicas: o.replicas,
    cpu: o.cpu,
    memory: o.memory,
    arch: o.arch,
    labels: parsePairs(o.label, '--label'),
    ports,
    service: o.service,
    restart: o.restart,
    env: parsePairs(o.env, '--env'),
    exclusive: o.exclusive ?? false,
  })
}
