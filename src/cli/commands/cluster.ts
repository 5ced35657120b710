import type { Command } from 'commander'
import { globals } from '../main.ts'
import { printJson } from '../output.ts'

/** Loaded when a command runs: it brings libp2p's keys and LevelDB, which the other commands never need. */
const setupModule = () => import('../../agent/setup.ts')

export function registerClusterCommands(program: Command): void {
  program
    .command('init')
    .description("create this node's identity and a new cluster; prints the join token as the last line")
    .option('--name <name>', "this node's name (default: the host name)")
    .action(async (opts: { name?: string }, cmd: Command) => {
      const g = globals(cmd)
      const { initCluster } = await setupModule()
      const setup = await initCluster(g.dataDir, { name: opts.name })
      if (g.json)
        return printJson({ name: setup.name, id: setup.peerId, created: setup.created, token: setup.token })
      process.stdout.write(
        `${setup.created ? 'Created a new cluster' : 'This node already has a cluster'}; node ${setup.name} (${setup.peerId}).\n` +
          `Start it with 'km1s agent'. On another machine run 'km1s join TOKEN' with this token:\n${setup.token}\n`,
      )
    })

  program
    .command('join')
    .description("store a cluster's secret from a join token for this data directory")
    .argument('<token>', "the token printed by 'km1s init' or 'km1s token' on a member node")
    .option('--name <name>', "this node's name (default: the host name)")
    .option('--force', 'move this data directory to another cluster')
    .action(async (token: string, opts: { name?: string; force?: boolean }, cmd: Command) => {
      const g = globals(cmd)
      const { joinCluster } = await setupModule()
      const setup = await joinCluster(g.dataDir, token, opts)
      if (g.json) return printJson({ name: setup.name, id: setup.peerId })
      process.stdout.write(`Joined: node ${setup.name} (${setup.peerId}). Start it with 'km1s agent'.\n`)
    })

  program
    .command('token')
    .description("print this cluster's join token")
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const { readJoinToken } = await setupModule()
      const token = await readJoinToken(g.dataDir)
      if (g.json) return printJson({ token })
      process.stdout.write(`${token}\n`)
    })
}
