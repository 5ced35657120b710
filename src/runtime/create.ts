// Which runtime an agent runs, and where its files go: the one place that decides, so the agent stays wiring.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { Km1sError } from '../common/errors.ts'
import type { Logger } from '../common/logger.ts'
import { detectOciRuntime } from './detect.ts'
import { defaultLogRoot } from './logs.ts'
import { instanceId, RuntimeNames } from './names.ts'
import { ContainerRuntime } from './runtime.ts'
import type { Runtime, RuntimeChoice } from './types.ts'

export { RUNTIME_CHOICES, type RuntimeChoice } from './types.ts'

export interface CreateRuntimeOptions {
  choice: RuntimeChoice
  peerId: string
  dataDir: string
  runDir?: string
  logDir?: string
  subnet?: string
  hostNetns?: string
  logger: Logger
}

function isRoot(): boolean {
  return process.getuid?.() === 0
}

/** /run is RAM on every Linux km1s runs on: volatile state and logs go there when we may write it. */
export function defaultRunRoot(dataDir: string): string {
  return isRoot() && existsSync('/run') ? '/run/km1s' : join(dataDir, 'run')
}

export async function createRuntime(opts: CreateRuntimeOptions): Promise<Runtime | undefined> {
  if (opts.choice === 'none') return undefined
  const names = new RuntimeNames({
    instance: instanceId(opts.peerId),
    runRoot: opts.runDir ?? defaultRunRoot(opts.dataDir),
    dataDir: opts.dataDir,
    logRoot: opts.logDir ?? defaultLogRoot(opts.dataDir),
  })
  const common = { names, log: opts.logger, subnet: opts.subnet, hostNetns: opts.hostNetns }
  if (opts.choice === 'process') return new ContainerRuntime({ kind: 'process', ...common })
  const oci = await detectOciRuntime()
  if (oci.runtime !== 'none') return new ContainerRuntime({ kind: 'oci', oci, ...common })
  if (opts.choice === 'oci') {
    throw new Km1sError(
      'ERR_NO_OCI_RUNTIME',
      `No OCI runtime works on this host (${oci.reason}); run \`km1s doctor\`.`,
    )
  }
  opts.logger.warn({ reason: oci.reason }, 'no OCI runtime works here; falling back to the process runtime')
  return new ContainerRuntime({ kind: 'process', ...common })
}
