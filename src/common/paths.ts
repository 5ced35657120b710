import { homedir } from 'node:os'
import { join, resolve } from 'node:path'

/** Where a node keeps its identity, cluster secret and database (DESIGN.md, the CLI contract). */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  if (env.KM1S_DATA_DIR) return resolve(env.KM1S_DATA_DIR)
  if (uid === 0) return '/var/lib/km1s'
  return join(env.HOME ?? homedir(), '.local', 'share', 'km1s')
}

export function defaultSocket(dataDir: string, env: NodeJS.ProcessEnv = process.env): string {
  if (env.KM1S_SOCKET) return resolve(env.KM1S_SOCKET)
  return join(dataDir, 'km1s.sock')
}

export interface DataPaths {
  dir: string
  identity: string
  clusterKey: string
  database: string
  pidFile: string
}

export function dataPaths(dir: string): DataPaths {
  return {
    dir,
    identity: join(dir, 'identity.key'),
    clusterKey: join(dir, 'cluster.key'),
    database: join(dir, 'db'),
    pidFile: join(dir, 'agent.pid'),
  }
}
