import { errorMessage } from '../common/errors.ts'
import { Agent, type AgentConfig } from './agent.ts'
import { CompilerGovernor } from './compilers.ts'

/** SIGTERM/SIGINT must end the agent within 2 s even if a subsystem hangs while stopping. */
const STOP_DEADLINE_MS = 1_800

/** Runs an agent in the foreground until a signal; resolves with the process exit code. */
export async function runAgent(config: AgentConfig, onReady?: (agent: Agent) => void): Promise<number> {
  const agent = new Agent(config)
  const log = config.logger
  let signalled: NodeJS.Signals | undefined
  const stopped = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      if (signalled) return
      signalled = signal
      log.info({ signal }, 'stopping')
      const deadline = setTimeout(() => {
        log.warn('the agent did not stop within the deadline; exiting anyway')
        resolve(1)
      }, STOP_DEADLINE_MS)
      deadline.unref()
      agent.stop().then(
        () => {
          clearTimeout(deadline)
          resolve(0)
        },
        (err) => {
          log.error({ err: errorMessage(err) }, 'stop failed')
          resolve(1)
        },
      )
    }
    // `on`, not `once`: a second Ctrl-C while stopping must not skip the clean stop (the deadline still holds).
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
  })
  // V8's optimizing compilers come on when the ready agent is busy (compilers.ts): a process-wide setting.
  const compilers = new CompilerGovernor({ execArgv: process.execArgv, logger: log })
  try {
    await agent.start()
    compilers.start()
    onReady?.(agent)
    return await stopped
  } finally {
    compilers.stop()
  }
}
