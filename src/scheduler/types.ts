// The scheduler's seams: the one call it makes into artifacts, and the status record it writes per replica.

/**
 * The slice of the artifacts subsystem the scheduler uses (contracts.md): the agent passes its `Artifacts`
 * instance once that branch is merged; until then none, and a workload with an artifact waits with a reason.
 */
export interface ArtifactSource {
  /** Makes `ref` available locally for `arch`; its files are in `dir`. Fails within seconds, never hangs. */
  ensure(ref: string, arch: string, opts?: { signal?: AbortSignal }): Promise<{ cid: string; dir: string }>
  /** The arches `ref` can run on; null = any (or not known here). */
  arches(ref: string): string[] | null
}

/** Whether a replica may count as available: the seam for health checks (the services issue). */
export type HealthCheck = (container: string) => boolean

export { ReplicaState, StatusValue } from '../state/record.ts'
