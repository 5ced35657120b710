// membership/: who is alive from here. Each node keeps its own signed `node/` record in state/ (name,
// arch, CPUs, memory, addresses, version, WireGuard key) and announces a tiny heartbeat on gossipsub
// every second; a node not heard for 3 s is suspect, 5 s dead. The live set is this node's own view: on
// both sides of a split the views differ, by design.
export { DEFAULT_DETECTOR, type DetectorConfig, type MemberState, memberState } from './detector.ts'
export {
  DEFAULT_FORGET_AFTER_MS,
  type Member,
  Membership,
  type MembershipInit,
  type MembershipStats,
} from './membership.ts'
export { HEARTBEAT_TOPIC } from './messages.ts'
export { resolveNode } from './resolve.ts'
