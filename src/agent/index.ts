// agent/: wires the subsystems together and owns startup, shutdown and the data directory.
// `km1s agent` and `km1s up` run one Agent in the foreground until SIGINT or SIGTERM.
export { Agent, type AgentConfig, archName } from './agent.ts'
export { DEFAULT_LISTEN, DEFAULT_TOKEN_FILE } from './defaults.ts'
export { runAgent } from './run.ts'
export {
  type ClusterSetup,
  consumeTokenFile,
  defaultNodeName,
  initCluster,
  joinCluster,
  readJoinToken,
  validateNodeName,
} from './setup.ts'
