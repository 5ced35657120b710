// The km1s command line. Every command but init/join/token/doctor is a thin client of the local agent's
// control API; options and output follow DESIGN.md's command-line contract.
import { Command, Option } from 'commander'
import { errorMessage, isKm1sError } from '../common/errors.ts'
import { defaultDataDir, defaultSocket } from '../common/paths.ts'
import { KM1S_VERSION } from '../common/version.ts'
import { registerAgentCommands } from './commands/agent.ts'
import { registerArtifactCommands } from './commands/artifacts.ts'
import { registerClusterCommands } from './commands/cluster.ts'
import { registerContainerCommands } from './commands/containers.ts'
import { registerInfoCommands } from './commands/info.ts'
import { registerServiceCommands } from './commands/services.ts'
import { registerWorkloadCommands } from './commands/workloads.ts'

export interface GlobalOptions {
  dataDir: string
  socket: string
  json: boolean
  debug: boolean
}

/** The global options of a command's invocation, with the defaults of the CLI contract applied. */
export function globals(cmd: Command): GlobalOptions {
  const o = cmd.optsWithGlobals() as { dataDir?: string; socket?: string; json?: boolean; debug?: boolean }
  const dataDir = o.dataDir ?? defaultDataDir()
  return {
    dataDir,
    socket: o.socket ?? defaultSocket(dataDir),
    json: Boolean(o.json),
    debug: Boolean(o.debug),
  }
}

export function buildProgram(): Command {
  const program = new Command('km1s')
    .description('km1s ("kay-minus-ones"): small services on many small machines, every node an equal peer.')
    .version(KM1S_VERSION, '-V, --version')
    .addOption(
      new Option(
        '--data-dir <dir>',
        'data directory (default: /var/lib/km1s as root, else ~/.local/share/km1s)',
      ).env('KM1S_DATA_DIR'),
    )
    .addOption(
      new Option('--socket <path>', 'control API socket (default: DATA_DIR/km1s.sock)').env('KM1S_SOCKET'),
    )
    .option('--json', 'machine-readable output')
    .option('--debug', 'show stack traces on errors')
    .showHelpAfterError("(run 'km1s --help' for usage)")
    .configureHelp({ showGlobalOptions: true })
  registerClusterCommands(program)
  registerAgentCommands(program)
  registerInfoCommands(program)
  registerContainerCommands(program)
  registerWorkloadCommands(program)
  registerArtifactCommands(program)
  registerServiceCommands(program)
  return program
}

async function main(argv: string[]): Promise<void> {
  const program = buildProgram()
  program.exitOverride()
  try {
    await program.parseAsync(argv)
  } catch (err) {
    const code = (err as { code?: string }).code
    if (typeof code === 'string' && code.startsWith('commander.')) {
      // commander already printed its one-line error or the help text.
      process.exitCode = (err as { exitCode?: number }).exitCode ?? 1
      return
    }
    const debug = argv.includes('--debug')
    if (isKm1sError(err)) process.stderr.write(`${err.message}\n`)
    else process.stderr.write(`km1s failed: ${errorMessage(err)}\n`)
    if (debug && err instanceof Error) process.stderr.write(`${err.stack}\n`)
    process.exitCode = 1
  }
}

const major = Number(process.versions.node.split('.')[0])
if (major < 22) {
  process.stderr.write(
    `km1s needs Node.js 22 or newer but runs on ${process.version}; run 'npm install' in the km1s directory.\n`,
  )
  process.exit(1)
}
// Node 24 cuts small Buffers (allocUnsafe, from) out of 64 KiB slabs, where Node 20 used 8 KiB: one
// long-lived small buffer (a peer's address, a DHT distance, a digest) keeps its whole slab alive, ten slabs
// in an idle agent of a 10-node cluster (a heap snapshot). 8 KiB slabs, as before.
Buffer.poolSize = 8 * 1024
await main(process.argv)
