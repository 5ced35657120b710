// Rolling updates without a leader: every node computes the same "whose turn is it" from the status
// records, so at most one replica of a workload is down for an update at a time (max unavailable 1).

export interface ReplicaReport {
  index: number
  /** The spec hash its status reports; null when no live node reports it. */
  spec: string | null
  /** Running and healthy (the health seam: `isHealthy`, true until health checks exist). */
  available: boolean
}

/**
 * The index of the one replica that may be replaced by the new version `spec` now, or undefined.
 * A replica that is down already (and outdated) goes first: replacing it costs no availability. Otherwise
 * the lowest outdated index goes, and only while every other replica is available.
 */
export function chooseUpdate(replicas: readonly ReplicaReport[], spec: string): number | undefined {
  const outdated = replicas.filter((r) => r.spec !== null && r.spec !== spec)
  if (outdated.length === 0) return undefined
  const broken = outdated.find((r) => !r.available)
  if (broken) return broken.index
  const next = outdated[0] as ReplicaReport
  return replicas.every((r) => r.index === next.index || r.available) ? next.index : undefined
}
