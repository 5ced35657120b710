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
    artifact: o.artifact,
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
