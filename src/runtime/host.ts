// The host side of a bundle: which system paths exist here, and the mount points a read-only root needs.
import { existsSync } from 'node:fs'
import { chmod, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { DEFAULT_SYSTEM_PATHS } from './oci.ts'

/** The candidates that exist on this host (/lib64 is absent on some arm systems). */
export function presentSystemPaths(
  candidates: readonly string[] = DEFAULT_SYSTEM_PATHS,
  exists: (path: string) => boolean = existsSync,
): string[] {
  return candidates.filter((path) => exists(path))
}

/**
 * Makes `rootfs` with a world-writable sticky /tmp mount point: runc gives a tmpfs the mode of the directory
 * it covers, so a 0755 /tmp would leave the tmpfs unwritable for the unprivileged user.
 */
export async function prepareRootfs(rootfs: string): Promise<void> {
  await mkdir(join(rootfs, 'tmp'), { recursive: true })
  await chmod(join(rootfs, 'tmp'), 0o1777)
}
