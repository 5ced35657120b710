// scheduler/: workloads (workload.ts: flags and manifests → the stored form), placement as a pure function
// of (workloads, live nodes) (place.ts), the reconcile loop of this node (scheduler.ts), rolling-update
// turns (rolling.ts) and the control API's workload routes (api.ts). docs/scheduler.md.
export { createWorkloadHandlers, replicaViews } from './api.ts'
export {
  type Placement,
  type PlacementInput,
  type PlacementNode,
  type PlacementWorkload,
  place,
  type Unplaced,
  weight,
} from './place.ts'
export { chooseUpdate, type ReplicaReport } from './rolling.ts'
export { Scheduler, type SchedulerInit, type SchedulerStats } from './scheduler.ts'
export type { ArtifactSource, HealthCheck } from './types.ts'
export * from './workload.ts'
