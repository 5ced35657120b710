// membership/: who is alive from here. Each node announces a heartbeat (with its name, arch, CPUs,
// memory, version and addresses) on gossipsub every second; a node not heard for 3 s is suspect, 5 s dead.
// The live set is this node's own view: on both sides of a split the views differ, by design.
export { DEFAULT_DETECTOR, type DetectorConfig, type MemberState, memberState } from './detector.ts'
export { type Member, Membership, type MembershipInit, type MembershipStats } from './membership.ts'
export { HEARTBEAT_TOPIC, NodeInfo } from './messages.ts'
