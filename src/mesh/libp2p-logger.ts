import type { ComponentLogger, Logger } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'

// libp2p asks its ComponentLogger for a new logger on every stream (yamux scopes one per stream). The
// default builds it from `weald` (a `debug` fork): two `debug` instances per call, each matching DEBUG's
// patterns and asking isatty(2) whether to colour — work done even when nothing is ever printed, ~6 % of an
// old node's CPU while a peer joins a 10-node cluster (docs/mesh.md). km1s logs through pino; libp2p's own
// debug output is for whoever debugs libp2p, so it stays available, but only when DEBUG is set.

const silent: Logger = Object.assign(() => {}, {
  error: () => {},
  trace: () => {},
  enabled: false,
  newScope: () => silent,
})

/** libp2p's loggers: `debug`'s when DEBUG is set (e.g. `DEBUG=libp2p:*`), otherwise one that does nothing. */
export function libp2pLogger(env: NodeJS.ProcessEnv = process.env): ComponentLogger {
  if (env.DEBUG) return defaultLogger()
  return { forComponent: () => silent }
}
