// Artifacts: push a file or tree, pull one (with a progress bar), list, remove, gc (docs/artifacts.md).
// The agent reads the pushed path itself (CLI and agent share the machine): no file crosses the API. A pull
// with -o copies from the agent's read-only checkout with this user's own permissions.
import { chmod, copyFile, cp, lstat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { Command } from 'commander'
import { ApiClient } from '../../api/index.ts'
import type { PushResultView } from '../../api/schemas.ts'
import { Km1sError } from '../../common/errors.ts'
import type * as z from '../../common/schema.ts'
import { globals } from '../main.ts'
import { humanBytes, printJson, printTable } from '../output.ts'

interface ProgressEvent {
  t: 'progress' | 'done' | 'error'
  bytes: number
  total: number
  peers: number
  badBlocks: number
  code?: string
  message?: string
}

/**
 * A progress bar on stderr (bytes, rate, peers) when it is a terminal; nothing otherwise. cli-progress is
 * imported here, not at the top: every command module is evaluated in every km1s process, the agent's too,
 * and cli-progress loads node:readline (~1.8 MiB of RSS in a bare node) for a bar only a terminal sees.
 */
async function progressBar(enabled: boolean, showPeers: boolean) {
  if (!enabled) return { update: (_e: ProgressEvent) => {}, stop: () => {} }
  const { default: cliProgress } = await import('cli-progress')
  const bar = new cliProgress.SingleBar(
    {
      format: `{bar} {percentage}% | {done}/{all} | {rate}${showPeers ? ' | {peers} peers' : ''}`,
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
      barsize: 30,
    },
    cliProgress.Presets.shades_classic,
  )
  const started = Date.now()
  let running = false
  return {
    update(e: ProgressEvent) {
      const seconds = Math.max(0.001, (Date.now() - started) / 1000)
      const payload = {
        done: humanBytes(e.bytes),
        all: humanBytes(e.total),
        rate: `${humanBytes(e.bytes / seconds)}/s`,
        peers: e.peers,
      }
      if (!running) {
        bar.start(Math.max(1, e.total), e.bytes, payload)
        running = true
      } else {
        bar.setTotal(Math.max(1, e.total))
        bar.update(e.bytes, payload)
      }
    },
    stop: () => {
      if (running) bar.stop()
    },
  }
}

/** Follows a push or pull stream to its `done` result, drawing progress; an `error` event is thrown. */
async function follow<R>(
  events: AsyncIterable<ProgressEvent & { result?: R }>,
  bar: Awaited<ReturnType<typeof progressBar>>,
): Promise<R> {
  try {
    for await (const e of events) {
      bar.update(e)
      if (e.t === 'done' && e.result) return e.result
      if (e.t === 'error')
        throw new Km1sError(e.code ?? 'ERR_INTERNAL', e.message ?? 'The agent failed without a message.')
    }
  } finally {
    bar.stop()
  }
  throw new Km1sError(
    'ERR_AGENT_LOST',
    "The agent ended the stream before it finished; check the agent's log.",
  )
}

/** Pushes a local file or tree through the agent (which reads PATH itself), with a progress bar on a TTY. */
export async function pushPath(
  socket: string,
  path: string,
  name: string,
  opts: { arch?: string; bar: boolean },
): Promise<z.infer<typeof PushResultView>> {
  const abs = resolve(path)
  // Refused here too, so a user gets the error before the agent is involved.
  const s = await lstat(abs).catch((err: NodeJS.ErrnoException) => {
    throw new Km1sError('ERR_ARTIFACT_PATH', `Cannot read ${abs}: ${err.code ?? err.message}.`)
  })
  if (s.isSocket() || s.isFIFO() || s.isCharacterDevice() || s.isBlockDevice())
    throw new Km1sError(
      'ERR_ARTIFACT_PATH',
      `${abs} is not a regular file or a directory; km1s push refuses sockets, FIFOs and devices.`,
    )
  const ctl = new AbortController()
  const bar = await progressBar(opts.bar && process.stderr.isTTY === true, false)
  try {
    return await follow(new ApiClient(socket).push({ path: abs, name, arch: opts.arch }, ctl.signal), bar)
  } finally {
    ctl.abort()
  }
}

export function registerArtifactCommands(program: Command): void {
  program
    .command('push')
    .description(
      'stores a file or directory as a content-addressed artifact and tags it NAME:TAG for its arch',
    )
    .argument('<path>', 'a regular file (its arch is read from its ELF header) or a directory')
    .requiredOption('--name <name:tag>', 'the tag, e.g. hello:1')
    .option('--arch <arch>', 'amd64, arm64, armv7, … (default: from the ELF header, else any)')
    .action(async (path: string, opts: { name: string; arch?: string }, cmd: Command) => {
      const g = globals(cmd)
      const r = await pushPath(g.socket, path, opts.name, { arch: opts.arch, bar: !g.json })
      if (g.json) return printJson(r)
      process.stdout.write(
        `${r.name}:${r.tag} ${r.arch} ${humanBytes(r.size)} (${r.files} files)\n${r.cid}\n`,
      )
    })

  program
    .command('pull')
    .description(
      'fetches an artifact from the peers that hold it (several at once), optionally writing it to PATH',
    )
    .argument('<ref>', 'NAME:TAG or a root CID')
    .option('-o, --output <path>', 'write the file (or the directory tree) here')
    .option('--arch <arch>', "which arch's build (default: this node's)")
    .action(async (ref: string, opts: { output?: string; arch?: string }, cmd: Command) => {
      const g = globals(cmd)
      const ctl = new AbortController()
      process.once('SIGINT', () => ctl.abort())
      const bar = await progressBar(!g.json && process.stderr.isTTY === true, true)
      const r = await follow(
        new ApiClient(g.socket).pull(
          { ref, arch: opts.arch, checkout: opts.output !== undefined },
          ctl.signal,
        ),
        bar,
      )
      ctl.abort()
      let output: string | undefined
      if (opts.output !== undefined && r.dir) {
        output = resolve(opts.output)
        if (r.kind === 'file') {
          const { readdir } = await import('node:fs/promises')
          const [name] = await readdir(r.dir)
          await copyFile(join(r.dir, name ?? ''), output)
          const mode = (await lstat(join(r.dir, name ?? ''))).mode & 0o777
          await chmod(output, mode | 0o200)
        } else await cp(r.dir, output, { recursive: true, verbatimSymlinks: true })
      }
      if (g.json) return printJson({ ...r, output: output ?? null })
      process.stdout.write(
        `${r.cid} ${r.arch} ${humanBytes(r.size)} from ${r.peers} peers${r.badBlocks ? `, ${r.badBlocks} corrupt blocks refused` : ''}${output ? ` → ${output}` : ''}\n`,
      )
    })

  const artifacts = program
    .command('artifacts')
    .description('the tagged artifacts: name, tag, arch, size, CID, whether this node holds them')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const list = await new ApiClient(g.socket).artifacts()
      if (g.json) return printJson(list)
      printTable(
        ['NAME', 'TAG', 'ARCH', 'SIZE', 'CID', 'LOCAL'],
        list.map((a) => [a.name, a.tag, a.arch, humanBytes(a.size), a.cid, a.local ? 'yes' : 'no']),
      )
    })
  artifacts
    .command('rm')
    .description(
      'removes a tag (all arches, or --arch) from the cluster, or a root CID from this node, then gc',
    )
    .argument('<ref>', 'NAME:TAG or a root CID')
    .option('--arch <arch>', 'only this arch of the tag')
    .action(async (ref: string, opts: { arch?: string }, cmd: Command) => {
      const g = globals(cmd)
      const r = await new ApiClient(g.socket).removeArtifact(ref, opts.arch)
      if (g.json) return printJson(r)
      process.stdout.write(
        `removed ${r.removedTags} tag(s); freed ${humanBytes(r.freedBytes)} (${r.removedBlocks} blocks)\n`,
      )
    })
  artifacts
    .command('status')
    .description(
      "this node's store: blocks, bytes and quota, what it served (and over how many fast lanes), corrupt blocks refused, peers banned",
    )
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const s = await new ApiClient(g.socket).artifactsStatus()
      if (g.json) return printJson(s)
      printTable(
        ['BLOCKS', 'SIZE', 'QUOTA', 'SERVED', 'FAST LANES', 'CORRUPT BLOCKS REFUSED', 'PEERS BANNED'],
        [
          [
            s.blocks,
            humanBytes(s.bytes),
            humanBytes(s.quota),
            humanBytes(s.bytesServed),
            s.fastLanes,
            s.badBlocksReceived,
            s.bannedPeers,
          ],
        ],
      )
    })
  artifacts
    .command('gc')
    .description('removes the blocks and checkouts that no tag or workload refers to')
    .action(async (_opts: unknown, cmd: Command) => {
      const g = globals(cmd)
      const r = await new ApiClient(g.socket).gcArtifacts()
      if (g.json) return printJson(r)
      process.stdout.write(
        `freed ${humanBytes(r.freedBytes)} (${r.removedBlocks} blocks); ${r.keptRoots} artifacts kept\n`,
      )
    })
}
