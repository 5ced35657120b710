// services/: service records and their virtual IPs (allocate.ts, pure), the controller that keeps them in
// line with the workloads on every node (controller.ts), endpoints as DNS and the load balancer see them
// (endpoints.ts) and health checks of this node's replicas (health.ts). docs/services.md.
export {
  chooseIp,
  claimWins,
  homeIndex,
  ipAt,
  planServices,
  SERVICE_CIDR,
  type ServicePlan,
} from './allocate.ts'
export { type ServiceStore, Services, type ServicesInit } from './controller.ts'
export { type RecordLike, type ServiceEndpoints, serviceEndpoints } from './endpoints.ts'
export {
  HealthMonitor,
  type HealthMonitorInit,
  type HealthState,
  type HealthStats,
  INITIAL_HEALTH,
  probe,
  stepHealth,
} from './health.ts'
