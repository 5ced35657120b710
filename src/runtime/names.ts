// Every host resource a km1s node makes carries its instance prefix `km1s-<6 hex>`, so that the agent can
// find (and sweep) exactly its own things at start, also when several agents share one host (the test lab).
import { createHash } from 'node:crypto'
import { join } from 'node:path'

export const INSTANCE_PATTERN = /^[0-9a-f]{6}$/
/** The instance's cgroup of the containers' supervisors, one child per container (`_`: never a container). */
export const SHIMS_CGROUP = '_shims'

/** The instance id of a node: 6 hex characters of its peer id's hash, stable across restarts. */
export function instanceId(peerId: string): string {
  return createHash('sha256').update(peerId).digest('hex').slice(0, 6)
}

/** Names of one node's resources. Pure. */
export class RuntimeNames {
  readonly instance: string
  readonly prefix: string
  /** Volatile state (bundles, FIFOs, pid and exit files): gone after a reboot, like the containers. */
  readonly runDir: string
  /** The wanted containers, on disk: what the agent adopts or recreates at start. */
  readonly specDir: string
  readonly logDir: string

  constructor(opts: { instance: string; runRoot: string; dataDir: string; logRoot: string }) {
    if (!INSTANCE_PATTERN.test(opts.instance)) throw new Error(`bad instance id ${opts.instance}`)
    this.instance = opts.instance
    this.prefix = `km1s-${opts.instance}`
    this.runDir = join(opts.runRoot, this.prefix)
    this.specDir = join(opts.dataDir, 'runtime', 'containers')
    this.logDir = join(opts.logRoot, this.prefix)
  }

  /** The OCI container id of one process. */
  ociId(container: string, process: string): string {
    return `${this.prefix}-${container}.${process}`
  }

  /** Container and process of an OCI id of this instance, or undefined for anything else. */
  parseOciId(id: string): { container: string; process: string } | undefined {
    if (!id.startsWith(`${this.prefix}-`)) return undefined
    const [container, process, ...rest] = id.slice(this.prefix.length + 1).split('.')
    if (!container || !process || rest.length > 0) return undefined
    return { container, process }
  }

  /** The cgroup of the container: its processes and its pause process (the shims: shimCgroup). */
  containerCgroup(container: string): string {
    return `/${this.prefix}/${container}`
  }

  /** Where the process's limits live; the OCI runtime's own cgroup is the child `oci`. */
  processCgroup(container: string, process: string): string {
    return `/${this.prefix}/${container}/${process}`
  }

  /** Unlimited siblings of the processes: `_` cannot start a process name. */
  pauseCgroup(container: string): string {
    return `/${this.prefix}/${container}/_pause`
  }

  /**
   * The container's supervisors (shims and their `crun run`s): beside the containers, under `_shims`,
   * not inside the container's own cgroup — outside its memory accounting (cgroups.ts, HierarchyChoice).
   */
  shimCgroup(container: string): string {
    return `/${this.prefix}/${SHIMS_CGROUP}/${container}`
  }

  containerDir(container: string): string {
    return join(this.runDir, container)
  }

  processDir(container: string, process: string): string {
    return join(this.runDir, container, process)
  }

  containerLogDir(container: string): string {
    return join(this.logDir, container)
  }

  specFile(container: string): string {
    return join(this.specDir, `${container}.json`)
  }
}
