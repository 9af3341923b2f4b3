/**
 * Reading and validating a VHD's metadata (footer, dynamic header, BAT,
 * parent locators) without opening its parent: open, info and check all
 * start here. Everything read is checked against the file's size before
 * use, so a damaged or hostile image is refused, never followed.
 */
import { DmuError } from '../../errors.js';
import { badImage, fitBlock, type ImageFile } from '../raw/io.js';
import {
	BAT_UNUSED,
	DISK_DIFF,
	DISK_DYNAMIC,
	DISK_FIXED,
	type DynHeader,
	dynHeaderChecksumOk,
	type Footer,
	FOOTER_SIZE,
	footerChecksumOk,
	HEADER_SIZE,
	parseDynHeader,
	parseFooter,
	virtualSizeOf,
} from './layout.js';

export interface VhdMeta {
	footer: Footer;
	header?: DynHeader;
	bat?: Uint32Array;
	virtualSize: bigint;
	blockSize: number;
	nextFree: bigint;
	fileSize: bigint;
	/** The trailing footer was missing or damaged (the copy at 0 was used). */
	tailFooterBad: boolean;
	/** Parent names from the locators and header, best first. */
	parentNames: string[];
}

const FIXED_BLOCK = 2 * 1024 * 1024;
const MAX_SIZE = 1n << 48n;
const round512 = (n: bigint) => (n + 511n) & ~511n;

async function readFooter(file: ImageFile, fileSize: bigint, force: boolean) {
	const path = file.path;
	const head = await file.read(0, FOOTER_SIZE, 'footer copy');
	const tail = await file.read(fileSize - 512n, FOOTER_SIZE, 'footer');
	const h = parseFooter(head);
	const t = parseFooter(tail);
	const hOk = h !== undefined && footerChecksumOk(head) && (h.diskType === DISK_DYNAMIC || h.diskType === DISK_DIFF);
	const tOk = t !== undefined && footerChecksumOk(tail);
	// Dynamic disks: like qemu, trust the copy at the start (the trailing
	// one moves on every allocation and may be lost by a crash).
	if (hOk && h) return { footer: h, tailBad: !tOk };
	if (tOk && t) return { footer: t, tailBad: false };
	const any = h ?? t;
	if (any && force) return { footer: any, tailBad: !tOk };
	if (any) throw badImage(path, 'VHD footer checksum mismatch (damaged image; --force opens it anyway)');
	throw badImage(path, 'not a VHD: no "conectix" footer at the start or the end');
}

export async function readMeta(file: ImageFile, force = false): Promise<VhdMeta> {
	const path = file.path;
	const fileSize = await file.size();
	if (fileSize < 512n) throw badImage(path, 'too small for a VHD footer');
	const { footer, tailBad } = await readFooter(file, fileSize, force);
	const virtualSize = virtualSizeOf(footer);
	if (virtualSize === 0n || virtualSize > MAX_SIZE) throw badImage(path, `VHD disk size ${virtualSize} is out of range`);
	if (footer.diskType === DISK_FIXED) {
		if (virtualSize + 512n > fileSize) {
			throw badImage(path, `fixed VHD of ${virtualSize} bytes but the file holds only ${fileSize - 512n}`);
		}
		// No partial last block: the kernel wants mappings inside the file.
		return { footer, virtualSize, blockSize: fitBlock(virtualSize, FIXED_BLOCK), nextFree: fileSize, fileSize, tailFooterBad: false, parentNames: [] };
	}
	if (footer.diskType !== DISK_DYNAMIC && footer.diskType !== DISK_DIFF) {
		throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: VHD disk type ${footer.diskType} is not supported (fixed, dynamic, differencing are)`);
	}
	if (footer.dataOffset % 512n !== 0n || footer.dataOffset + BigInt(HEADER_SIZE) > fileSize) {
		throw badImage(path, `VHD dynamic header offset ${footer.dataOffset} is outside the file`);
	}
	const hb = await file.read(footer.dataOffset, HEADER_SIZE, 'dynamic header');
	const header = parseDynHeader(hb);
	if (!header) throw badImage(path, 'VHD dynamic header has no "cxsparse" cookie');
	if (!dynHeaderChecksumOk(hb) && !force) throw badImage(path, 'VHD dynamic header checksum mismatch (--force opens it anyway)');
	const bs = header.blockSize;
	if (bs < 512 || bs > 8 * 1024 * 1024 || (bs & (bs - 1)) !== 0) {
		throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: VHD block size ${bs} is not supported (a power of two, 512 B to 8 MiB)`);
	}
	const needed = (virtualSize + BigInt(bs) - 1n) / BigInt(bs);
	if (needed > 1n << 26n) throw new DmuError('DMU_ERR_UNSUPPORTED', `${path}: VHD needs ${needed} BAT entries, more than dmu handles`);
	const entries = header.maxTableEntries;
	if (BigInt(entries) < needed) throw badImage(path, `VHD BAT has ${entries} entries, the disk needs ${needed}`);
	const batBytes = round512(BigInt(entries) * 4n);
	if (header.tableOffset % 512n !== 0n || header.tableOffset + BigInt(entries) * 4n > fileSize) {
		throw badImage(path, `VHD BAT (${entries} entries at ${header.tableOffset}) lies outside the file`);
	}
	const raw = await file.read(header.tableOffset, Number(needed) * 4, 'BAT');
	const bat = new Uint32Array(Number(needed));
	const bitmapBytes = BigInt(Math.ceil(bs / 512 / 8 / 512) * 512);
	let end = round512(header.tableOffset + batBytes);
	end = end > footer.dataOffset + 1024n ? end : footer.dataOffset + 1024n;
	for (let i = 0; i < bat.length; i++) {
		const e = raw.readUInt32BE(i * 4);
		bat[i] = e;
		if (e === BAT_UNUSED) continue;
		const blockEnd = BigInt(e) * 512n + bitmapBytes + BigInt(bs);
		if (e === 0 || blockEnd > fileSize) throw badImage(path, `VHD block ${i} at sector ${e} lies outside the file`);
		if (blockEnd > end) end = blockEnd;
	}
	const parentNames: string[] = [];
	if (footer.diskType === DISK_DIFF) {
		for (const l of header.locators) {
			if (l.dataLength === 0 || l.dataLength > 4096 || l.dataOffset + BigInt(l.dataLength) > fileSize) continue;
			const data = await file.read(l.dataOffset, l.dataLength, `parent locator ${l.code}`);
			const stored = round512(l.dataOffset + BigInt(Math.max(l.dataLength, 1)));
			if (stored > end && stored <= fileSize - 512n) end = stored;
			const name = locatorPath(l.code, data);
			if (name) parentNames.push(name);
		}
		parentNames.sort((a, b) => rank(a) - rank(b));
		if (header.parentName) parentNames.push(header.parentName);
	}
	const tail = tailBad ? fileSize : fileSize - 512n;
	const nextFree = round512(tail > end ? tail : end);
	return { footer, header, bat, virtualSize, blockSize: bs, nextFree, fileSize, tailFooterBad: tailBad, parentNames };
}

/** Relative names first: they survive moving a directory of images. */
const rank = (p: string) => (p.startsWith('/') ? 1 : 0);

/** A locator's path in local form, or undefined for kinds we cannot use. */
function locatorPath(code: string, data: Buffer): string | undefined {
	let s: string;
	switch (code) {
		case 'W2ku':
		case 'W2ru':
			s = data.toString('utf16le');
			break;
		case 'Wi2k':
		case 'Wi2r':
			s = data.toString('latin1');
			break;
		case 'MacX': {
			s = data.toString('utf8').replace(/\0.*$/s, '');
			if (!s.startsWith('file://')) return undefined;
			try {
				return decodeURIComponent(s.slice('file://'.length));
			} catch {
				return undefined;
			}
		}
		default:
			return undefined; // 'Mac ' aliases and unknown codes
	}
	s = s.replace(/\0.*$/s, '').replace(/\\/g, '/');
	if (/^[A-Za-z]:/.test(s) || s === '') return undefined; // a Windows drive path means nothing here
	return s.replace(/^\.\//, '');
}
